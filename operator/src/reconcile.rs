//! Reconciling a `Coolpy7Cluster`: build every child with the pure functions of
//! [`crate::children`], server-side-apply them with one field manager, then patch the status
//! from what the StatefulSet and the client Service report. Thin on purpose: every decision
//! about what an object contains lives in `children`, and is tested there.
//!
//! The cluster key Secret is the exception to "apply": it is created once when absent and
//! never written again, since applying would replace the key and split the cluster.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::children;
use crate::crd::{
    AuthMode, Coolpy7Cluster, Coolpy7ClusterStatus, Phase, UsernameFromCertificate, VerifyClients,
    MAX_FSYNC_INTERVAL_MS,
};
use crate::metrics::Metrics;
use crate::quantity;

/// The one field manager of every apply, so that a user's edit of a field we own is reverted
/// on the next reconcile.
pub const FIELD_MANAGER: &str = "coolpy7-operator";

/// How soon a cluster whose key, certificate or auth Secret (or ACL ConfigMap) is missing is
/// looked at again.
const KEY_RETRY: Duration = Duration::from_secs(30);
/// How often a healthy cluster is looked at again without any change.
const RESYNC: Duration = Duration::from_secs(300);
/// Backoff after a failed reconcile: doubles from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Flags the operator sets itself; the spec's `args` may not set them. The listeners must
/// match the pods' and Services' ports, and the certificate, key, password and rules files the
/// mounted Secrets and ConfigMap; the auth mode goes with those files, and a JWT secret or an
/// HTTP service token given as a value (`-jsk`, `-ht`) would show in the pod spec. The drain
/// grace (`-dg`) must match the pods' terminationGracePeriodSeconds, which is made from
/// `drain.graceSeconds`: a longer one in `args` would be cut short by the kubelet's SIGKILL.
/// The data directory (`-dd`) must be the volume the operator mounts, and its fsync interval
/// (`-dfs`) goes with it, both from `persistence`.
/// The other listener settings (`-wsp`, `-tv`, `-tcn`, `-pp`), the auth settings (`-acld`,
/// `-ha`, `-hat`, `-hac`, `-ari`), the abuse limits, the forwarding settings (`-csb`, `-csl`,
/// `-ssp`) and the other drain settings (`-dr`, `-dsr`) may be overridden like the MQTT 5
/// limits.
///
/// Every flag is in the pod template, so a change of any of them (the spec's `args` included)
/// is a rolling update; so is a change of `drain.graceSeconds`, through the template's
/// terminationGracePeriodSeconds. `replicas` and `minReadySeconds` are the StatefulSet's own
/// and restart nothing; so is the claims' retention policy. The volume claim template
/// (`persistence.enabled`, `size`, `storageClassName`) cannot change at all: see
/// [`persistence_change_problem`].
const OWNED_FLAGS: [&str; 26] = [
    "nid", "cad", "mbs", "csk", "crp", "csp", "l", "hl", "tl", "wl", "wsl", "tc", "tk", "tca",
    "cl", "as", "jsk", "jskf", "jpk", "pwf", "acl", "ht", "htf", "dg", "dd", "dfs",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("the Coolpy7Cluster has no namespace")]
    NoNamespace,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    /// The cluster's DNS domain, for the seeds (`cluster.local` unless configured).
    pub cluster_domain: String,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Failed attempts in a row, per cluster, for the backoff.
    failures: Mutex<HashMap<(String, String), u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        cluster_domain: String,
        recorder: Recorder,
        metrics: Arc<Metrics>,
    ) -> Context {
        Context {
            client,
            cluster_domain,
            recorder,
            metrics,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u32>> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn key(cluster: &Coolpy7Cluster) -> (String, String) {
    (cluster.namespace().unwrap_or_default(), cluster.name_any())
}

/// Brings the cluster's children in line with its spec and reports the status.
pub async fn reconcile(cluster: Arc<Coolpy7Cluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&cluster, &ctx).await;
    ctx.metrics.observe_duration(started.elapsed());
    if result.is_ok() {
        ctx.failures().remove(&key(&cluster));
    }
    result
}

async fn reconcile_inner(cluster: &Coolpy7Cluster, ctx: &Context) -> Result<Action, Error> {
    // Being deleted: the garbage collector removes the children through their owner
    // references; applying them now would only race it.
    if cluster.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = cluster.namespace().ok_or(Error::NoNamespace)?;
    let name = cluster.name_any();
    let client = ctx.client.clone();

    if let Some(problem) = spec_problem(cluster) {
        report_degraded(ctx, cluster, INVALID_SPEC, &problem).await?;
        // Nothing changes until the spec does; a slow resync in case the cause is elsewhere.
        return Ok(Action::requeue(RESYNC));
    }

    let key = match &cluster.spec.csk {
        None => ensure_csk_secret(cluster, ctx, &namespace).await?,
        Some(_) => read_key(cluster, ctx, &namespace).await?,
    };
    let key = match key {
        Ok(key) => key,
        Err(problem) => {
            // Pods would sit in CreateContainerConfigError; say why instead.
            report_degraded(ctx, cluster, "CskMissing", &problem).await?;
            return Ok(Action::requeue(KEY_RETRY));
        }
    };
    // The pods could not start without them (they would wait in ContainerCreating, and a
    // rolling update would take a pod down for good); say why instead, and change nothing.
    if let Some((reason, problem)) = missing_mounted_object(cluster, ctx, &namespace).await? {
        report_degraded(ctx, cluster, reason, &problem).await?;
        return Ok(Action::requeue(KEY_RETRY));
    }
    let fingerprint = children::key_fingerprint(&key);
    let (set, client_service) = match apply_children(cluster, ctx, &namespace, &fingerprint).await {
        Ok(Ok(applied)) => applied,
        // The spec's persistence is not what the StatefulSet was made with, and cannot become
        // it: say what to do, and look again slowly (deleting the StatefulSet, as the message
        // says, is a change the operator sees at once).
        Ok(Err(problem)) => {
            report_degraded(ctx, cluster, PERSISTENCE_IMMUTABLE, &problem).await?;
            return Ok(Action::requeue(RESYNC));
        }
        // The API server refused an object built from this spec (an invalid quantity or label,
        // an immutable field changed): the spec's problem, reported as such, not retried hot.
        Err(kube::Error::Api(status)) if matches!(status.code, 400 | 422) => {
            let problem = format!("the API server refused a child object: {}", status.message);
            report_degraded(ctx, cluster, INVALID_SPEC, &problem).await?;
            return Ok(Action::requeue(RESYNC));
        }
        Err(error) => return Err(error.into()),
    };

    let status = observed_status(cluster, &set, &client_service, &ctx.cluster_domain);
    patch_status(&client, &namespace, &name, &status).await?;
    Ok(Action::requeue(RESYNC))
}

/// The reason of a spec the operator refuses (its Event's and its Degraded condition's).
const INVALID_SPEC: &str = "InvalidSpec";
/// The reason of a spec whose persistence the StatefulSet cannot take (its volume claim
/// templates never change).
pub const PERSISTENCE_IMMUTABLE: &str = "PersistenceImmutable";

/// A spec the operator cannot run: logged, a Warning event with `reason`, and a Degraded
/// status whose conditions carry the same reason; the children are left as they are.
async fn report_degraded(
    ctx: &Context,
    cluster: &Coolpy7Cluster,
    reason: &str,
    problem: &str,
) -> Result<(), Error> {
    let namespace = cluster.namespace().ok_or(Error::NoNamespace)?;
    let name = cluster.name_any();
    warn!(%namespace, %name, reason, %problem, "cannot run the spec");
    publish(ctx, cluster, EventType::Warning, reason, problem).await;
    let status = degraded_status(cluster, reason, problem);
    patch_status(&ctx.client, &namespace, &name, &status).await
}

/// Server-side-applies every child (and deletes a disabled budget); returns the applied
/// StatefulSet and client Service, whose status the cluster's status is made from, or why the
/// StatefulSet cannot take the spec's persistence (the children after it left as they were).
async fn apply_children(
    cluster: &Coolpy7Cluster,
    ctx: &Context,
    namespace: &str,
    key_fingerprint: &str,
) -> Result<Result<(StatefulSet, Service), String>, kube::Error> {
    let name = cluster.name_any();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    let headless = children::headless_service(cluster);
    services
        .patch(
            &children::headless_service_name(cluster),
            &params,
            &Patch::Apply(&headless),
        )
        .await?;
    let client_service = services
        .patch(
            &name,
            &params,
            &Patch::Apply(&children::client_service(cluster)),
        )
        .await?;
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let applied = sets
        .patch(
            &name,
            &params,
            &Patch::Apply(&children::with_key_fingerprint(
                children::stateful_set(cluster, &ctx.cluster_domain),
                key_fingerprint,
            )),
        )
        .await;
    let set = match applied {
        Ok(set) => set,
        // Refused: perhaps for the volume claim templates, which the API server says only as
        // "updates to statefulset spec for fields other than ... are forbidden". Look at what
        // the StatefulSet was made with and name the field, or pass the refusal on.
        Err(kube::Error::Api(status)) if matches!(status.code, 400 | 422) => {
            if let Some(existing) = sets.get_opt(&name).await? {
                if let Some(problem) = persistence_change_problem(cluster, &existing) {
                    return Ok(Err(problem));
                }
            }
            return Err(kube::Error::Api(status));
        }
        Err(error) => return Err(error),
    };
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), namespace);
    match children::pod_disruption_budget(cluster) {
        Some(budget) => {
            budgets
                .patch(&name, &params, &Patch::Apply(&budget))
                .await?;
        }
        None => match budgets.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error),
        },
    }
    Ok(Ok((set, client_service)))
}

/// The size a claim template requests, as written.
fn requested_size(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|size| size.0.as_str())
}

/// Why StatefulSet `existing` cannot take the volume claim template the spec's persistence
/// makes, if it cannot: Kubernetes never lets a StatefulSet's volumeClaimTemplates change, so
/// enabling or disabling persistence on a running cluster, or changing the claims' size or
/// class, is refused. Sizes compare by value (the API server writes `1024Mi` back as `1Gi`).
/// What to do is in the message: set the field back, or delete the StatefulSet but not its
/// pods, for the operator to make it again (the pods, adopted, are then replaced one at a time
/// if their template changed).
pub fn persistence_change_problem(
    cluster: &Coolpy7Cluster,
    existing: &StatefulSet,
) -> Option<String> {
    let name = cluster.name_any();
    let namespace = cluster.namespace().unwrap_or_default();
    let orphan = format!("kubectl delete statefulset {name} -n {namespace} --cascade=orphan");
    let made_with = existing
        .spec
        .as_ref()
        .and_then(|spec| spec.volume_claim_templates.as_ref())
        .and_then(|templates| {
            templates
                .iter()
                .find(|claim| claim.metadata.name.as_deref() == Some(children::DATA_VOLUME))
        });
    let wanted = children::data_claim_template(cluster);
    let volume = children::DATA_VOLUME;
    match (wanted.as_ref(), made_with) {
        (None, None) => None,
        (Some(_), None) => Some(format!(
            "persistence.enabled is true, but StatefulSet {name} was made without a data volume \
             and a StatefulSet's volume claim templates never change. To give the brokers \
             their volumes, run `{orphan}`: the operator makes it again with them, and the \
             pods are replaced one at a time, each draining first. Or set persistence.enabled \
             back to false"
        )),
        (None, Some(_)) => Some(format!(
            "persistence.enabled is false, but StatefulSet {name} was made with a data volume \
             and a StatefulSet's volume claim templates never change. To run in memory only, \
             run `{orphan}`: the operator makes it again without, the pods are replaced one at \
             a time, each draining first, and the claims {volume}-{name}-<n> stay until you \
             delete them. Or set persistence.enabled back to true"
        )),
        (Some(wanted), Some(made_with)) => {
            let old_size = requested_size(made_with).unwrap_or_default();
            let new_size = requested_size(wanted).unwrap_or_default();
            let same_size = match (quantity::bytes(old_size), quantity::bytes(new_size)) {
                (Ok(old), Ok(new)) => old == new,
                _ => old_size == new_size,
            };
            if !same_size {
                return Some(format!(
                    "persistence.size is {new_size}, but StatefulSet {name} was made with claims \
                     of {old_size} and a StatefulSet's volume claim templates never change. Set \
                     persistence.size back to {old_size}; or grow each claim {volume}-{name}-<n> \
                     (if its StorageClass allows volume expansion: kubectl patch pvc), then run \
                     `{orphan}` for the operator to make it again with the new size for the \
                     claims to come"
                ));
            }
            let class = |claim: &PersistentVolumeClaim| {
                claim
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.storage_class_name.clone())
            };
            let (old_class, new_class) = (class(made_with), class(wanted));
            if old_class == new_class {
                return None;
            }
            let describe = |class: &Option<String>| match class.as_deref() {
                None => "left out (the default class)".to_string(),
                Some("") => "\"\" (no class)".to_string(),
                Some(class) => class.to_string(),
            };
            let (old_class, new_class) = (describe(&old_class), describe(&new_class));
            Some(format!(
                "persistence.storageClassName is {new_class}, but StatefulSet {name} was made \
                 with {old_class} and a StatefulSet's volume claim templates never change. Set \
                 it back; claims cannot move to another class (to start over in the new one, \
                 run `{orphan}`, then delete each claim {volume}-{name}-<n> and its pod in \
                 turn: the pod drains and hands its sessions over, and comes back with a new, \
                 empty claim)"
            ))
        }
    }
}

/// The cluster key from its Secret: the key's bytes, or what is wrong (for the status).
fn key_from(secret: &Secret, name: &str, key: &str) -> Result<Vec<u8>, String> {
    match secret.data.as_ref().and_then(|data| data.get(key)) {
        Some(value) if !value.0.is_empty() => Ok(value.0.clone()),
        _ => Err(format!(
            "Secret {name} has no key {key:?} holding the cluster key"
        )),
    }
}

/// A Secret or ConfigMap the pods mount, as the operator read it.
pub enum Fetched<'a> {
    Secret(&'a Secret),
    ConfigMap(&'a ConfigMap),
}

impl Fetched<'_> {
    /// Whether `key` is there and not empty. A Secret's stringData is write-only: one created
    /// with it reads back as data. A ConfigMap's key may be text (data) or bytes (binaryData).
    fn holds(&self, key: &str) -> bool {
        match self {
            Fetched::Secret(secret) => secret
                .data
                .as_ref()
                .and_then(|data| data.get(key))
                .is_some_and(|value| !value.0.is_empty()),
            Fetched::ConfigMap(map) => {
                let text = map.data.as_ref().and_then(|data| data.get(key));
                let bytes = map.binary_data.as_ref().and_then(|data| data.get(key));
                text.is_some_and(|value| !value.is_empty())
                    || bytes.is_some_and(|value| !value.0.is_empty())
            }
        }
    }
}

/// What is wrong with a Secret or ConfigMap the pods mount (for TLS or auth), if anything: it
/// is missing, or lacks a key the broker reads, or that key is empty. Its contents may change
/// at any time (a renewed certificate, an edited password file); the brokers reload them, so
/// nothing of them goes into the pod template.
pub fn mounted_object_problem(
    mounted: &children::MountedObject,
    fetched: Option<Fetched<'_>>,
) -> Option<String> {
    let kind = mounted.kind.as_str();
    let name = &mounted.name;
    let field = mounted.field;
    let Some(fetched) = fetched else {
        let hint = if mounted.missing_reason == children::TLS_SECRET_MISSING {
            " (cert-manager may not have issued it yet)"
        } else {
            ""
        };
        return Some(format!("{kind} {name} ({field}) does not exist{hint}"));
    };
    let missing: Vec<&str> = mounted
        .keys
        .iter()
        .filter(|key| !fetched.holds(key))
        .map(String::as_str)
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{kind} {name} ({field}) has no {}",
            missing
                .iter()
                .map(|key| format!("{key:?}"))
                .collect::<Vec<_>>()
                .join(" or ")
        )
    })
}

/// The first problem with the Secrets and ConfigMaps the pods would mount, read from the API
/// server, with the reason to report it with.
async fn missing_mounted_object(
    cluster: &Coolpy7Cluster,
    ctx: &Context,
    namespace: &str,
) -> Result<Option<(&'static str, String)>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    for mounted in children::mounted_objects(cluster) {
        let problem = match mounted.kind {
            children::MountKind::Secret => {
                let secret = secrets.get_opt(&mounted.name).await?;
                mounted_object_problem(&mounted, secret.as_ref().map(Fetched::Secret))
            }
            children::MountKind::ConfigMap => {
                let map = config_maps.get_opt(&mounted.name).await?;
                mounted_object_problem(&mounted, map.as_ref().map(Fetched::ConfigMap))
            }
        };
        if let Some(problem) = problem {
            return Ok(Some((mounted.missing_reason, problem)));
        }
    }
    Ok(None)
}

/// The key from the Secret the spec names.
async fn read_key(
    cluster: &Coolpy7Cluster,
    ctx: &Context,
    namespace: &str,
) -> Result<Result<Vec<u8>, String>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let (name, key) = children::csk_secret_ref(cluster);
    Ok(match secrets.get_opt(&name).await? {
        Some(secret) => key_from(&secret, &name, &key),
        None => Err(format!("Secret {name} (spec.csk) does not exist")),
    })
}

/// The generated key: read when its Secret exists, else created (and never written again).
async fn ensure_csk_secret(
    cluster: &Coolpy7Cluster,
    ctx: &Context,
    namespace: &str,
) -> Result<Result<Vec<u8>, String>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let (secret_name, key) = children::csk_secret_ref(cluster);
    if let Some(secret) = secrets.get_opt(&secret_name).await? {
        return Ok(key_from(&secret, &secret_name, &key));
    }
    let mut random = [0u8; children::CSK_BYTES];
    rand::fill(&mut random[..]);
    let secret = children::csk_secret(cluster, &random);
    let created = secrets
        .create(
            &PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            },
            &secret,
        )
        .await;
    match created {
        Ok(_) => {
            info!(%namespace, secret = %secret_name, "created the cluster key");
            publish(
                ctx,
                cluster,
                EventType::Normal,
                "CskCreated",
                &format!("created Secret {secret_name} with a random cluster key"),
            )
            .await;
            Ok(key_from(&secret, &secret_name, &key))
        }
        // Another reconcile created it in between: theirs stands, read it next time.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Err(format!(
            "Secret {secret_name} was created concurrently; retrying"
        ))),
        Err(error) => Err(error.into()),
    }
}

async fn patch_status(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &Coolpy7ClusterStatus,
) -> Result<(), Error> {
    let api: Api<Coolpy7Cluster> = Api::namespaced(client.clone(), namespace);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    cluster: &Coolpy7Cluster,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &cluster.object_ref(&())).await {
        warn!(%error, reason, "cannot publish an event");
    }
}

/// A spec that would give a broken cluster: what the schema cannot say, and the schema's CEL
/// rules on listeners, TLS and auth again (an API server may run without CEL validation, and
/// the builders need them to hold).
pub fn spec_problem(cluster: &Coolpy7Cluster) -> Option<String> {
    let name = cluster.name_any();
    // Pods are `<name>-<n>` with a revision-hash label of the name plus 11 characters, and the
    // Services need a DNS-1035 label: so at most 52 characters, starting with a letter.
    let dns_1035 = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if name.len() > 52 || !dns_1035 {
        return Some(format!(
            "the name {name:?} cannot name the cluster's Services and pods: use at most 52 \
             lowercase letters, digits and '-', starting with a letter"
        ));
    }
    let ports = &cluster.spec.ports;
    let mut named = vec![
        ("ports.mqtt", ports.mqtt),
        ("ports.gossip", ports.gossip),
        ("ports.sync", ports.sync),
        ("ports.http", ports.http),
    ];
    let listeners = &cluster.spec.listeners;
    // A disabled listener's port is not opened, so it may be anything.
    for (field, enabled, port) in [
        (
            "listeners.tls.port",
            listeners.tls.enabled,
            listeners.tls.port,
        ),
        (
            "listeners.websocket.port",
            listeners.websocket.enabled,
            listeners.websocket.port,
        ),
        (
            "listeners.websocketTls.port",
            listeners.websocket_tls.enabled,
            listeners.websocket_tls.port,
        ),
    ] {
        if enabled {
            named.push((field, port));
        }
    }
    for (i, (a, port_a)) in named.iter().enumerate() {
        for (b, port_b) in &named[i + 1..] {
            // ports.mqtt is opened only by the plain listener: with that off, another listener
            // may take its number (gossip, sync and http still may not, as before).
            let both_open =
                listeners.mqtt.enabled || !(*a == "ports.mqtt" && b.starts_with("listeners."));
            if port_a == port_b && both_open {
                return Some(format!(
                    "{a} and {b} are both {port_a}; each port needs its own number"
                ));
            }
        }
    }
    // The CoAP listener is UDP: only the other UDP ports are in its way.
    if let Some(coap) = children::coap_port(cluster) {
        for (field, port) in [("ports.gossip", ports.gossip), ("ports.sync", ports.sync)] {
            if coap == port {
                return Some(format!(
                    "{field} and listeners.coap.port are both {port}; each UDP port needs its \
                     own number"
                ));
            }
        }
    }
    if let Some(problem) = listener_problem(cluster) {
        return Some(problem);
    }
    if let Some(problem) = auth_problem(cluster) {
        return Some(problem);
    }
    if let Some(problem) = forwarding_problem(cluster) {
        return Some(problem);
    }
    if let Some(problem) = drain_problem(cluster) {
        return Some(problem);
    }
    if let Some(problem) = persistence_problem(cluster) {
        return Some(problem);
    }
    for arg in &cluster.spec.args {
        let flag = arg.trim_start_matches('-');
        let flag = flag.split_once('=').map_or(flag, |(name, _)| name);
        if arg.starts_with('-') && flag.contains(char::is_whitespace) {
            return Some(format!(
                "args item {arg:?} holds a flag and its value: write -flag=value, or give \
                 them as two items"
            ));
        }
        if arg.starts_with('-') && matches!(flag, "h" | "help" | "V" | "version") {
            return Some(format!("args item {arg:?} makes the broker print and exit"));
        }
        if arg.starts_with('-') && flag == "dg" {
            return Some(format!(
                "args sets {arg:?}: set drain.graceSeconds instead, which the pods' \
                 terminationGracePeriodSeconds follows"
            ));
        }
        if arg.starts_with('-') && flag == "dd" {
            return Some(format!(
                "args sets {arg:?}: set persistence.enabled instead, for the data directory to \
                 be a volume of each pod's own, mounted at {}",
                children::DATA_DIR
            ));
        }
        if arg.starts_with('-') && flag == "dfs" {
            return Some(format!(
                "args sets {arg:?}: set persistence.fsyncIntervalMs instead"
            ));
        }
        if arg.starts_with('-') && OWNED_FLAGS.contains(&flag) {
            return Some(format!(
                "args sets {arg:?}, which the operator sets itself (node id, seeds, key and \
                 ports come from the spec)"
            ));
        }
    }
    // The broker reads every flag from its environment too (COOLPY7_<FLAG>): the spec's own
    // settings may not come in that way either.
    for env in &cluster.spec.env {
        let field = match env.name.as_str() {
            "COOLPY7_DG" => "drain.graceSeconds",
            "COOLPY7_DD" => "persistence.enabled",
            "COOLPY7_DFS" => "persistence.fsyncIntervalMs",
            _ => continue,
        };
        return Some(format!("env sets {}: set {field} instead", env.name));
    }
    for range in &cluster.spec.service.load_balancer_source_ranges {
        if !is_cidr(range) {
            return Some(format!(
                "service.loadBalancerSourceRanges: {range:?} is not a CIDR such as 10.0.0.0/8"
            ));
        }
    }
    None
}

/// The CEL rules on listeners and TLS, but for ports (checked with the others).
fn listener_problem(cluster: &Coolpy7Cluster) -> Option<String> {
    let listeners = children::enabled_listeners(cluster);
    if listeners.is_empty() {
        return Some("every listener is disabled: enable at least one in listeners".into());
    }
    let tls = cluster.spec.tls.as_ref();
    let tls_listener = listeners.iter().any(|(kind, _)| kind.uses_tls());
    if tls_listener && tls.and_then(|tls| tls.secret_name.as_ref()).is_none() {
        return Some(
            "listeners.tls and listeners.websocketTls need tls.secretName (a \
             kubernetes.io/tls Secret)"
                .into(),
        );
    }
    let tls = tls?;
    let verify = tls.verify_clients;
    let verifying = matches!(
        verify,
        Some(VerifyClients::Optional | VerifyClients::Required)
    );
    if verifying && tls.client_ca_secret_name.is_none() {
        return Some("tls.verifyClients optional or required needs tls.clientCASecretName".into());
    }
    let clients_have_certificates =
        tls.client_ca_secret_name.is_some() && verify != Some(VerifyClients::None);
    if tls.username_from_certificate != UsernameFromCertificate::Off && !clients_have_certificates {
        return Some(
            "tls.usernameFromCertificate needs client certificates: set \
             tls.clientCASecretName, and tls.verifyClients other than none"
                .into(),
        );
    }
    None
}

/// The CEL rules on auth: what each mode needs.
fn auth_problem(cluster: &Coolpy7Cluster) -> Option<String> {
    let auth = cluster.spec.auth.as_ref()?;
    match auth.mode {
        AuthMode::Jwt if auth.jwt_secret.is_some() == auth.jwt_public_key.is_some() => Some(
            "auth.mode jwt needs one of auth.jwtSecret (an HMAC secret, for HS* tokens) and \
             auth.jwtPublicKey (a PEM public key, for RS*, PS*, ES* and EdDSA tokens), not both"
                .into(),
        ),
        AuthMode::Password if auth.password_secret.is_none() => Some(
            "auth.mode password needs auth.passwordSecret (a Secret of user:hash lines)".into(),
        ),
        AuthMode::Http if auth.http_hook.is_none() => {
            Some("auth.mode http needs auth.httpHook.url (the authentication service)".into())
        }
        // What the CRD's pattern says, for a cluster that bypassed it: the brokers refuse
        // both at start, and a password in the URL would sit in the pod spec.
        AuthMode::Http
            if auth.http_hook.as_ref().is_some_and(|hook| {
                let rest = hook.url.strip_prefix("http://");
                rest.is_none_or(|rest| {
                    rest.split('/')
                        .next()
                        .is_some_and(|host| host.contains('@'))
                })
            }) =>
        {
            Some(
                "auth.httpHook.url must be an http:// URL without user:password@ (HTTPS is not \
                 supported yet; put a token in auth.httpHook.tokenSecret)"
                    .into(),
            )
        }
        _ => None,
    }
}

/// The CEL rule on forwarding: the broker refuses a `-csl` of 1 to 63 at start.
fn forwarding_problem(cluster: &Coolpy7Cluster) -> Option<String> {
    let limit = cluster.spec.forwarding.as_ref()?.record_limit_bytes?;
    (1..MIN_RECORD_LIMIT_BYTES).contains(&limit).then(|| {
        format!(
            "forwarding.recordLimitBytes is {limit}: 0 (no limit) or at least \
             {MIN_RECORD_LIMIT_BYTES} bytes"
        )
    })
}

/// The broker's smallest `-csl` other than 0 (MIN_SYNC_LIMIT): a record's framing and a short
/// topic.
const MIN_RECORD_LIMIT_BYTES: i64 = 64;

/// The CRD's CEL rule on `drain.serverReference`, and its bounds and pattern: the broker
/// refuses at start a `-dsr` that is empty or longer than 65535 bytes, or that holds a NUL
/// (which no argument can carry anyway).
fn drain_problem(cluster: &Coolpy7Cluster) -> Option<String> {
    let reference = cluster.spec.drain.as_ref()?.server_reference.as_ref()?;
    let bytes = reference.len();
    (bytes == 0 || bytes > MAX_SERVER_REFERENCE_BYTES || reference.contains('\0')).then(|| {
        format!(
            "drain.serverReference is {bytes} bytes: 1 to {MAX_SERVER_REFERENCE_BYTES} bytes \
             of UTF-8, without NUL"
        )
    })
}

/// The longest MQTT UTF-8 string, the broker's limit for `-dsr`.
const MAX_SERVER_REFERENCE_BYTES: usize = 65535;

/// The CRD's bounds and patterns on `persistence`, when it is enabled (the fields are unused
/// otherwise), and what the size's pattern lets through: 0, and fractions of a byte (`1.5`).
/// The claims would otherwise be refused, or rounded up, only once the pods are created.
fn persistence_problem(cluster: &Coolpy7Cluster) -> Option<String> {
    let persistence = &cluster.spec.persistence;
    if !persistence.enabled {
        return None;
    }
    let size = &persistence.size;
    if let Err(error) = quantity::bytes(size) {
        return Some(format!("persistence.size {size:?} {error}"));
    }
    if let Some(class) = &persistence.storage_class_name {
        if !is_dns_subdomain(class) && !class.is_empty() {
            return Some(format!(
                "persistence.storageClassName {class:?} cannot name a StorageClass: at most \
                 253 lowercase letters, digits, '-' and '.', starting and ending with a letter \
                 or digit (or \"\" for no class)"
            ));
        }
    }
    let interval = persistence.fsync_interval_ms;
    (!(0..=MAX_FSYNC_INTERVAL_MS).contains(&interval)).then(|| {
        format!(
            "persistence.fsyncIntervalMs is {interval}: 0 (fsync before each \
             acknowledgement) to {MAX_FSYNC_INTERVAL_MS} milliseconds"
        )
    })
}

/// A DNS subdomain (RFC 1123), as Kubernetes names most objects: at most 253 characters,
/// dot-separated labels of lowercase letters, digits and '-', each starting and ending with a
/// letter or digit.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_cidr(range: &str) -> bool {
    let Some((address, bits)) = range.split_once('/') else {
        return false;
    };
    let Ok(address) = address.parse::<IpAddr>() else {
        return false;
    };
    let max = if address.is_ipv4() { 32 } else { 128 };
    bits.parse::<u8>().is_ok_and(|bits| bits <= max)
}

fn condition(
    cluster: &Coolpy7Cluster,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if status { "True" } else { "False" };
    // The transition time only moves when the status does.
    let last_transition_time = cluster
        .status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
        })
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time,
        observed_generation: cluster.metadata.generation,
    }
}

/// The status of a spec the operator refuses, or cannot run yet (a missing Secret), with
/// `reason` on every condition: children are left as they are.
pub fn degraded_status(
    cluster: &Coolpy7Cluster,
    reason: &str,
    problem: &str,
) -> Coolpy7ClusterStatus {
    let previous = cluster.status.clone().unwrap_or_default();
    Coolpy7ClusterStatus {
        observed_generation: cluster.metadata.generation,
        phase: Some(Phase::Degraded),
        selector: Some(children::selector_string(cluster)),
        conditions: vec![
            condition(cluster, "Ready", false, reason, problem.into()),
            condition(cluster, "Progressing", false, reason, problem.into()),
            condition(cluster, "Degraded", true, reason, problem.into()),
        ],
        ..previous
    }
}

/// The status from what the StatefulSet and the client Service report.
pub fn observed_status(
    cluster: &Coolpy7Cluster,
    set: &StatefulSet,
    service: &Service,
    cluster_domain: &str,
) -> Coolpy7ClusterStatus {
    let wanted = cluster.spec.replicas;
    let set_status = set.status.clone().unwrap_or_default();
    let ready = set_status.ready_replicas.unwrap_or(0);
    let updated = set_status.updated_replicas.unwrap_or(0);
    // The apply returns the new spec with the old status: until the StatefulSet controller has
    // seen this generation and rolled every pod to it, nothing is known to run the new spec.
    let caught_up = set_status.observed_generation.unwrap_or(0)
        >= set.metadata.generation.unwrap_or(0)
        && set_status.update_revision.is_some()
        && set_status.current_revision == set_status.update_revision;
    let phase =
        if caught_up && ready >= wanted && updated >= wanted && set_status.replicas == wanted {
            Phase::Running
        } else if ready == 0 {
            Phase::Pending
        } else {
            Phase::Progressing
        };
    let running = phase == Phase::Running;
    let message = if caught_up || ready == 0 {
        format!("{ready} of {wanted} brokers ready")
    } else {
        format!("{ready} of {wanted} brokers ready; rolling out the current spec")
    };
    let endpoints = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ingress| {
            ingress
                .iter()
                .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
                .flat_map(|host| endpoints(cluster, &host))
                .collect()
        })
        .unwrap_or_default();
    Coolpy7ClusterStatus {
        observed_generation: cluster.metadata.generation,
        replicas: set_status.replicas,
        ready_replicas: ready,
        selector: Some(children::selector_string(cluster)),
        phase: Some(phase),
        conditions: vec![
            condition(
                cluster,
                "Ready",
                running,
                if running { "AllReady" } else { "NotAllReady" },
                message.clone(),
            ),
            condition(
                cluster,
                "Progressing",
                !running,
                if running { "Stable" } else { "RollingOut" },
                message,
            ),
            condition(
                cluster,
                "Degraded",
                false,
                "SpecAccepted",
                "the spec is valid".into(),
            ),
        ],
        seeds: children::seeds(cluster, cluster_domain),
        csk_secret: Some(children::csk_secret_ref(cluster).0),
        endpoints,
    }
}

/// Where clients reach `host`: `host:port` for plain MQTT (as before there were other
/// listeners), a URL for each of the others.
fn endpoints(cluster: &Coolpy7Cluster, host: &str) -> Vec<String> {
    use children::ListenerKind;
    // An IPv6 address is bracketed in a URL.
    let url_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let path = &cluster.spec.listeners.websocket_path;
    children::enabled_listeners(cluster)
        .into_iter()
        .map(|(kind, port)| match kind {
            ListenerKind::Mqtt => format!("{host}:{port}"),
            ListenerKind::Tls => format!("mqtts://{url_host}:{port}"),
            ListenerKind::WebSocket => format!("ws://{url_host}:{port}{path}"),
            ListenerKind::WebSocketTls => format!("wss://{url_host}:{port}{path}"),
        })
        .chain(children::coap_port(cluster).map(|port| format!("coap://{url_host}:{port}")))
        .collect()
}

/// After a failed reconcile: count it, tell the user, and try again with exponential backoff.
pub fn error_policy(cluster: Arc<Coolpy7Cluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failures.inc();
    let attempts = {
        let mut failures = ctx.failures();
        let attempts = failures.entry(key(&cluster)).or_insert(0);
        *attempts = attempts.saturating_add(1);
        *attempts
    };
    let delay = backoff(attempts);
    warn!(namespace = ?cluster.namespace(), name = %cluster.name_any(), %error, attempts, ?delay, "reconcile failed");
    let note = format!("{error}; retrying in {}s", delay.as_secs());
    let ctx_for_event = ctx.clone();
    tokio::spawn(async move {
        publish(
            &ctx_for_event,
            &cluster,
            EventType::Warning,
            "ReconcileFailed",
            &note,
        )
        .await;
    });
    Action::requeue(delay)
}

/// 5 s, 10 s, 20 s, ... up to 5 minutes.
pub fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests;
