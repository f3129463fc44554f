//! The objects a `Coolpy7Cluster` owns, each built by a pure function from the resource (spec
//! in, object out) so that it can be tested field by field without an API server. The
//! reconciler applies them as they are; nothing here talks to Kubernetes.
//!
//! Names, for a cluster `c` in namespace `ns`: StatefulSet `c` (pods `c-0`, `c-1`, ...),
//! headless Service `c-headless` (the pods' DNS names, which are the gossip seeds), client
//! Service `c`, Secret `c-csk` (unless the spec names one), PodDisruptionBudget `c`; with
//! `spec.persistence`, the StatefulSet's controller makes a claim `data-c-<n>` per pod from its
//! volume claim template. The TLS and auth Secrets and the ACL ConfigMap the spec names are the
//! user's (or cert-manager's): mounted, never written.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, Secret, SecretKeySelector, SecretVolumeSource, SecurityContext, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use kube::{Resource, ResourceExt};

use crate::crd::{
    default_csk_key, AntiAffinity, AuthMode, AuthSpec, Coolpy7Cluster, TlsSpec,
    UsernameFromCertificate,
};

/// The cluster key the operator generates is this many random bytes, stored as hex text: the
/// broker reads it from an environment variable, which must be text without NUL bytes.
pub const CSK_BYTES: usize = 32;
/// Pods that serve as gossip seeds: the first ordinals, whatever the replica count, so that
/// scaling never changes the pod template (and never restarts a pod). Seeds that do not exist
/// (yet) are retried quietly by the broker.
pub const SEED_PODS: i32 = 3;
/// The broker's drain grace (`-dg`) when `spec.drain.graceSeconds` is left out.
pub const BROKER_DRAIN_GRACE_SECONDS: i64 = 30;
/// Seconds a pod gets beyond its drain grace before the kubelet kills it: the broker waits up
/// to 5 s for the connections' last writes, gives the other brokers up to 5 s to take in the
/// sessions still on it when the grace ran out, publishes the wills due, then leaves the
/// cluster, up to 2 s for the last forwards and 2 s for the leave announcement; the rest is
/// slack for the process's start of the drain and its exit.
pub const TERMINATION_GRACE_MARGIN_SECONDS: i64 = 20;
/// The StatefulSet's `minReadySeconds` when `spec.minReadySeconds` is left out: a rolling
/// update replaces the next pod only once the new one has been ready this long.
pub const DEFAULT_MIN_READY_SECONDS: i32 = 10;
const BROKER_CONTAINER: &str = "coolpy7";
/// Where the `tls.secretName` Secret is mounted, as a whole directory: a `subPath` mount would
/// never see a renewed certificate, and the broker reloads the files when they change.
pub const TLS_DIR: &str = "/etc/coolpy7/tls";
/// Where the `tls.clientCASecretName` Secret is mounted, as a whole directory.
pub const CLIENT_CA_DIR: &str = "/etc/coolpy7/client-ca";
/// Where the `auth.jwtSecret` or `auth.jwtPublicKey` Secret is mounted (mode jwt takes one of
/// them), as a whole directory: the broker re-reads the file when its content changes.
pub const JWT_DIR: &str = "/etc/coolpy7/auth/jwt";
/// Where the `auth.passwordSecret` Secret is mounted, as a whole directory.
pub const PASSWORDS_DIR: &str = "/etc/coolpy7/auth/passwords";
/// Where the `auth.aclConfigMap` ConfigMap is mounted, as a whole directory.
pub const ACL_DIR: &str = "/etc/coolpy7/auth/acl";
/// Where the `auth.httpHook.tokenSecret` Secret is mounted, as a whole directory.
pub const HOOK_DIR: &str = "/etc/coolpy7/auth/hook";
/// The broker's data directory (`-dd`) when `spec.persistence` is enabled: where each pod's
/// claim is mounted.
pub const DATA_DIR: &str = "/var/lib/coolpy7";
/// The volume claim template (claims `data-<cluster>-<ordinal>`) and the volume it mounts.
pub const DATA_VOLUME: &str = "data";
/// What becomes of the claims (`persistentVolumeClaimRetentionPolicy`). On a scale-down the
/// pods removed drain first, handing their sessions over to the other brokers, so their data
/// is no longer needed, and a claim kept would give the pod of that ordinal, on some later
/// scale-up, state gone stale meanwhile (retained messages since replaced or cleared): deleted,
/// once its pod is gone. When the cluster (and so the StatefulSet) is deleted: kept, as a
/// database's volumes are, so that a mistaken delete loses nothing and a cluster made again
/// with the same name in the same namespace starts from its state.
pub const CLAIMS_WHEN_SCALED: &str = "Delete";
pub const CLAIMS_WHEN_DELETED: &str = "Retain";
/// The mounted files (certificates, keys, credentials, rules) are readable by their group
/// only, which is the pod's fsGroup.
const SECRET_FILE_MODE: i32 = 0o440;
/// The pod's fsGroup when Secrets are mounted or a data volume is: the group of the broker
/// image's non-root user (`USER 65532:65532` in the Dockerfile). The kubelet gives the files
/// (and the data volume's directory, writable) this group and the container's processes this
/// supplementary group, whatever user the image runs as.
pub const SECRET_FILES_GROUP: i64 = 65532;
const HOSTNAME_TOPOLOGY: &str = "kubernetes.io/hostname";

/// The label the operator's watches of children select on, so it never lists other objects.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=coolpy7-operator";

/// Labels on every object of the cluster.
pub fn labels(cluster: &Coolpy7Cluster) -> BTreeMap<String, String> {
    let mut labels = selector_labels(cluster);
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "coolpy7-operator".into(),
    );
    labels.insert("app.kubernetes.io/component".into(), "broker".into());
    labels
}

/// The labels that select the cluster's pods: stable for the cluster's life.
pub fn selector_labels(cluster: &Coolpy7Cluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "coolpy7".to_string()),
        ("app.kubernetes.io/instance".to_string(), cluster.name_any()),
    ])
}

/// `app.kubernetes.io/name=coolpy7,app.kubernetes.io/instance=<name>`, for the scale
/// subresource's status.selector.
pub fn selector_string(cluster: &Coolpy7Cluster) -> String {
    selector_labels(cluster)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn headless_service_name(cluster: &Coolpy7Cluster) -> String {
    format!("{}-headless", cluster.name_any())
}

/// The Secret holding the cluster key: the spec's, or the one the operator generates.
pub fn csk_secret_ref(cluster: &Coolpy7Cluster) -> (String, String) {
    match &cluster.spec.csk {
        Some(csk) => (csk.secret_name.clone(), csk.key.clone()),
        None => (format!("{}-csk", cluster.name_any()), default_csk_key()),
    }
}

/// The brokers' MQTT listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    Mqtt,
    Tls,
    WebSocket,
    WebSocketTls,
}

impl ListenerKind {
    /// The name of the listener's port on the container and the Services.
    pub fn port_name(self) -> &'static str {
        match self {
            ListenerKind::Mqtt => "mqtt",
            ListenerKind::Tls => "mqtts",
            ListenerKind::WebSocket => "ws",
            ListenerKind::WebSocketTls => "wss",
        }
    }

    /// The broker flag that opens it.
    fn flag(self) -> &'static str {
        match self {
            ListenerKind::Mqtt => "-l",
            ListenerKind::Tls => "-tl",
            ListenerKind::WebSocket => "-wl",
            ListenerKind::WebSocketTls => "-wsl",
        }
    }

    /// Its name in the broker's `-pp` list.
    fn proxy_protocol_name(self) -> &'static str {
        match self {
            ListenerKind::Mqtt => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::WebSocket => "ws",
            ListenerKind::WebSocketTls => "wss",
        }
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::WebSocketTls)
    }

    pub fn uses_websocket(self) -> bool {
        matches!(self, ListenerKind::WebSocket | ListenerKind::WebSocketTls)
    }
}

/// The enabled listeners and their ports, in the order mqtt, tls, websocket, websocketTls.
pub fn enabled_listeners(cluster: &Coolpy7Cluster) -> Vec<(ListenerKind, i32)> {
    let listeners = &cluster.spec.listeners;
    [
        (
            ListenerKind::Mqtt,
            listeners.mqtt.enabled,
            cluster.spec.ports.mqtt,
        ),
        (ListenerKind::Tls, listeners.tls.enabled, listeners.tls.port),
        (
            ListenerKind::WebSocket,
            listeners.websocket.enabled,
            listeners.websocket.port,
        ),
        (
            ListenerKind::WebSocketTls,
            listeners.websocket_tls.enabled,
            listeners.websocket_tls.port,
        ),
    ]
    .into_iter()
    .filter(|(_, enabled, _)| *enabled)
    .map(|(kind, _, port)| (kind, port))
    .collect()
}

/// The TLS settings the brokers get: `spec.tls` when a TLS listener is enabled and it names the
/// certificate Secret (the schema and `spec_problem` refuse a TLS listener without one). The
/// broker refuses TLS flags without a TLS listener, so without one `spec.tls` is left unused.
pub fn tls_in_use(cluster: &Coolpy7Cluster) -> Option<&TlsSpec> {
    let tls_listener = enabled_listeners(cluster)
        .iter()
        .any(|(kind, _)| kind.uses_tls());
    cluster
        .spec
        .tls
        .as_ref()
        .filter(|tls| tls_listener && tls.secret_name.is_some())
}

/// The CoAP listener's UDP port, when it is enabled.
pub fn coap_port(cluster: &Coolpy7Cluster) -> Option<i32> {
    let coap = &cluster.spec.listeners.coap;
    coap.enabled.then_some(coap.port)
}

/// The kind of object a pod volume comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountKind {
    Secret,
    ConfigMap,
}

impl MountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MountKind::Secret => "Secret",
            MountKind::ConfigMap => "ConfigMap",
        }
    }
}

/// A Secret or ConfigMap the pods mount: its name, the keys the broker reads from it, the spec
/// field that names it (for messages), where it is mounted, and the reason a missing one is
/// reported with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountedObject {
    pub kind: MountKind,
    pub name: String,
    pub keys: Vec<String>,
    pub field: &'static str,
    pub volume: &'static str,
    pub dir: &'static str,
    pub missing_reason: &'static str,
}

/// The reasons a missing mounted object is reported with (the Event's and the Degraded
/// condition's).
pub const TLS_SECRET_MISSING: &str = "TlsSecretMissing";
pub const AUTH_SECRET_MISSING: &str = "AuthSecretMissing";
pub const AUTH_CONFIG_MAP_MISSING: &str = "AuthConfigMapMissing";

/// The Secrets and ConfigMaps the pods mount: for TLS the certificate, and the client CA
/// bundle when given; for auth what the mode uses (the JWT key, the password file, the HTTP
/// service's token), and the ACL rules in any mode. What the mode does not use is left out,
/// like TLS settings without a TLS listener.
pub fn mounted_objects(cluster: &Coolpy7Cluster) -> Vec<MountedObject> {
    let mut objects = Vec::new();
    if let Some(tls) = tls_in_use(cluster) {
        if let Some(name) = &tls.secret_name {
            objects.push(MountedObject {
                kind: MountKind::Secret,
                name: name.clone(),
                keys: vec!["tls.crt".into(), "tls.key".into()],
                field: "tls.secretName",
                volume: "tls",
                dir: TLS_DIR,
                missing_reason: TLS_SECRET_MISSING,
            });
        }
        if let Some(name) = &tls.client_ca_secret_name {
            objects.push(MountedObject {
                kind: MountKind::Secret,
                name: name.clone(),
                keys: vec![tls.client_ca_key.clone()],
                field: "tls.clientCASecretName",
                volume: "client-ca",
                dir: CLIENT_CA_DIR,
                missing_reason: TLS_SECRET_MISSING,
            });
        }
    }
    if let Some(auth) = &cluster.spec.auth {
        let secret = |reference: &crate::crd::SecretKeyRef,
                      field: &'static str,
                      volume: &'static str,
                      dir: &'static str| MountedObject {
            kind: MountKind::Secret,
            name: reference.name.clone(),
            keys: vec![reference.key.clone()],
            field,
            volume,
            dir,
            missing_reason: AUTH_SECRET_MISSING,
        };
        match auth.mode {
            AuthMode::None => {}
            AuthMode::Jwt => {
                if let Some(reference) = &auth.jwt_secret {
                    objects.push(secret(reference, "auth.jwtSecret", "auth-jwt", JWT_DIR));
                } else if let Some(reference) = &auth.jwt_public_key {
                    objects.push(secret(reference, "auth.jwtPublicKey", "auth-jwt", JWT_DIR));
                }
            }
            AuthMode::Password => {
                if let Some(reference) = &auth.password_secret {
                    objects.push(secret(
                        reference,
                        "auth.passwordSecret",
                        "auth-passwords",
                        PASSWORDS_DIR,
                    ));
                }
            }
            AuthMode::Http => {
                if let Some(reference) = auth
                    .http_hook
                    .as_ref()
                    .and_then(|hook| hook.token_secret.as_ref())
                {
                    objects.push(secret(
                        reference,
                        "auth.httpHook.tokenSecret",
                        "auth-hook",
                        HOOK_DIR,
                    ));
                }
            }
        }
        if let Some(reference) = &auth.acl_config_map {
            objects.push(MountedObject {
                kind: MountKind::ConfigMap,
                name: reference.name.clone(),
                keys: vec![reference.key.clone()],
                field: "auth.aclConfigMap",
                volume: "auth-acl",
                dir: ACL_DIR,
                missing_reason: AUTH_CONFIG_MAP_MISSING,
            });
        }
    }
    objects
}

fn owner_reference(cluster: &Coolpy7Cluster) -> Vec<OwnerReference> {
    cluster.controller_owner_ref(&()).into_iter().collect()
}

fn metadata(cluster: &Coolpy7Cluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cluster.namespace(),
        labels: Some(labels(cluster)),
        owner_references: Some(owner_reference(cluster)),
        ..ObjectMeta::default()
    }
}

/// The generated cluster key Secret: `random` (bytes from the caller) as lowercase hex.
pub fn csk_secret(cluster: &Coolpy7Cluster, random: &[u8]) -> Secret {
    let (name, data_key) = csk_secret_ref(cluster);
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    Secret {
        metadata: metadata(cluster, name),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(data_key, ByteString(hex.into_bytes()))])),
        ..Secret::default()
    }
}

/// The per-pod DNS names the brokers join through (`-mbs`).
pub fn seeds(cluster: &Coolpy7Cluster, cluster_domain: &str) -> Vec<String> {
    let name = cluster.name_any();
    let namespace = cluster.namespace().unwrap_or_else(|| "default".into());
    let headless = headless_service_name(cluster);
    let port = cluster.spec.ports.gossip;
    (0..SEED_PODS)
        .map(|i| format!("{name}-{i}.{headless}.{namespace}.svc.{cluster_domain}:{port}"))
        .collect()
}

fn port(name: &str, port: i32, protocol: &str) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some(protocol.into()),
        ..ServicePort::default()
    }
}

/// Gives every pod a DNS name, ready or not (peers must find each other before they are
/// ready), with the gossip and sync ports.
pub fn headless_service(cluster: &Coolpy7Cluster) -> Service {
    let ports = &cluster.spec.ports;
    let mut headless_ports = vec![
        port("gossip", ports.gossip, "UDP"),
        port("sync", ports.sync, "UDP"),
    ];
    // The plain MQTT port as before; a disabled listener has no port on the pods to point at.
    if cluster.spec.listeners.mqtt.enabled {
        headless_ports.push(port("mqtt", ports.mqtt, "TCP"));
    }
    Service {
        metadata: metadata(cluster, headless_service_name(cluster)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(cluster)),
            ports: Some(headless_ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The Service MQTT clients connect to (a LoadBalancer by default), with a port per enabled
/// listener: TCP for the MQTT ones, UDP for CoAP.
pub fn client_service(cluster: &Coolpy7Cluster) -> Service {
    let spec = &cluster.spec.service;
    let mut meta = metadata(cluster, cluster.name_any());
    if let Some(labels) = meta.labels.as_mut() {
        labels.extend(spec.labels.clone());
    }
    if !spec.annotations.is_empty() {
        meta.annotations = Some(spec.annotations.clone());
    }
    let load_balancer = spec.type_ == crate::crd::ServiceType::LoadBalancer;
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some(spec.type_.as_str().into()),
            selector: Some(selector_labels(cluster)),
            ports: Some(
                enabled_listeners(cluster)
                    .into_iter()
                    .map(|(kind, listener_port)| port(kind.port_name(), listener_port, "TCP"))
                    .chain(coap_port(cluster).map(|coap| port("coap", coap, "UDP")))
                    .collect(),
            ),
            load_balancer_class: spec.load_balancer_class.clone().filter(|_| load_balancer),
            load_balancer_source_ranges: (load_balancer
                && !spec.load_balancer_source_ranges.is_empty())
            .then(|| spec.load_balancer_source_ranges.clone()),
            // Only meaningful for Services with external traffic.
            external_traffic_policy: spec
                .external_traffic_policy
                .filter(|_| spec.type_ != crate::crd::ServiceType::ClusterIP)
                .map(|policy| policy.as_str().into()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn env_from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The listener flags: `-l` always (`-l=nil` turns the plain listener off, which the broker
/// opens by default), the other listeners when enabled, the WebSocket path when a WebSocket
/// listener is on, the certificate files when a TLS one is, and `-pp` naming every enabled
/// listener when the spec asks for the PROXY protocol. Settings left out keep the broker's
/// defaults (client verification: required with a CA, else none; username: CONNECT's).
fn listener_args(cluster: &Coolpy7Cluster) -> Vec<String> {
    let listeners = enabled_listeners(cluster);
    let mut args = Vec::new();
    if !cluster.spec.listeners.mqtt.enabled {
        args.push("-l=nil".to_string());
    }
    args.extend(
        listeners
            .iter()
            .map(|(kind, port)| format!("{}=:{port}", kind.flag())),
    );
    if listeners.iter().any(|(kind, _)| kind.uses_websocket()) {
        args.push(format!("-wsp={}", cluster.spec.listeners.websocket_path));
    }
    if let Some(tls) = tls_in_use(cluster) {
        args.push(format!("-tc={TLS_DIR}/tls.crt"));
        args.push(format!("-tk={TLS_DIR}/tls.key"));
        if tls.client_ca_secret_name.is_some() {
            args.push(format!("-tca={CLIENT_CA_DIR}/{}", tls.client_ca_key));
        }
        if let Some(verify) = tls.verify_clients {
            args.push(format!("-tv={}", verify.as_str()));
        }
        if tls.username_from_certificate != UsernameFromCertificate::Off {
            args.push(format!("-tcn={}", tls.username_from_certificate.as_str()));
        }
    }
    if cluster.spec.proxy_protocol {
        let names: Vec<&str> = listeners
            .iter()
            .map(|(kind, _)| kind.proxy_protocol_name())
            .collect();
        args.push(format!("-pp={}", names.join(",")));
    }
    if let Some(coap) = coap_port(cluster) {
        args.push(format!("-cl=:{coap}"));
    }
    args
}

/// The auth flags: the mode (`-as`, left out for none, the broker's default), the files of
/// the objects [`mounted_objects`] mounts for it, the HTTP service's settings, and the rules
/// (`-acl`, `-acld`) in any mode. Nothing without `spec.auth`.
fn auth_args(auth: &AuthSpec) -> Vec<String> {
    let mut args = Vec::new();
    if auth.mode != AuthMode::None {
        args.push(format!("-as={}", auth.mode.flag_value()));
    }
    match auth.mode {
        AuthMode::None => {}
        AuthMode::Jwt => {
            // The file forms: an edited Secret reaches the brokers without a restart.
            if let Some(secret) = &auth.jwt_secret {
                args.push(format!("-jskf={JWT_DIR}/{}", secret.key));
            } else if let Some(public_key) = &auth.jwt_public_key {
                args.push(format!("-jpk={JWT_DIR}/{}", public_key.key));
            }
        }
        AuthMode::Password => {
            if let Some(passwords) = &auth.password_secret {
                args.push(format!("-pwf={PASSWORDS_DIR}/{}", passwords.key));
            }
        }
        AuthMode::Http => {
            if let Some(hook) = &auth.http_hook {
                args.push(format!("-ha={}", hook.url));
                if let Some(token) = &hook.token_secret {
                    args.push(format!("-htf={HOOK_DIR}/{}", token.key));
                }
                if let Some(timeout) = hook.timeout_seconds {
                    args.push(format!("-hat={timeout}"));
                }
                if let Some(cache) = hook.cache_seconds {
                    args.push(format!("-hac={cache}"));
                }
            }
        }
    }
    if let Some(acl) = &auth.acl_config_map {
        args.push(format!("-acl={ACL_DIR}/{}", acl.key));
    }
    if let Some(default) = auth.acl_default {
        args.push(format!("-acld={}", default.as_str()));
    }
    args
}

/// The abuse limits' flags, each only when set above 0 (0 is off, the broker's default).
fn limit_args(cluster: &Coolpy7Cluster) -> Vec<String> {
    let Some(limits) = &cluster.spec.limits else {
        return Vec::new();
    };
    let rate = limits.publish_rate.as_ref();
    [
        ("-pl", limits.ping_interval_seconds.map(i64::from)),
        ("-psl", limits.publish_interval_millis.map(i64::from)),
        ("-dt", limits.ban_seconds.map(i64::from)),
        ("-cr", limits.connection_rate.map(i64::from)),
        ("-prm", rate.and_then(|rate| rate.messages).map(i64::from)),
        ("-prb", rate.and_then(|rate| rate.bytes)),
    ]
    .into_iter()
    .filter_map(|(flag, value)| {
        value
            .filter(|value| *value > 0)
            .map(|value| format!("{flag}={value}"))
    })
    .collect()
}

/// The forwarding flags, each only when set: 0 is a value for `-csl` (no limit).
fn forwarding_args(cluster: &Coolpy7Cluster) -> Vec<String> {
    let Some(sync) = &cluster.spec.forwarding else {
        return Vec::new();
    };
    let mut args: Vec<String> = [
        ("-csb", sync.buffer_bytes),
        ("-csl", sync.record_limit_bytes),
    ]
    .into_iter()
    .filter_map(|(flag, value)| value.map(|value| format!("{flag}={value}")))
    .collect();
    if let Some(policy) = sync.shared_subscriptions {
        args.push(format!("-ssp={}", policy.as_str()));
    }
    args
}

/// The drain flags, each only when set: 0 is a value for `-dg` and `-dr` (at once).
fn drain_args(cluster: &Coolpy7Cluster) -> Vec<String> {
    let Some(drain) = &cluster.spec.drain else {
        return Vec::new();
    };
    let mut args: Vec<String> = [("-dg", drain.grace_seconds), ("-dr", drain.disconnect_rate)]
        .into_iter()
        .filter_map(|(flag, value)| value.map(|value| format!("{flag}={value}")))
        .collect();
    if let Some(reference) = &drain.server_reference {
        args.push(format!("-dsr={reference}"));
    }
    args
}

/// The data directory and fsync flags, when `spec.persistence` is enabled: `-dfs` always, 0
/// included, so that the pod spec says how the writes reach the disk.
fn persistence_args(cluster: &Coolpy7Cluster) -> Vec<String> {
    let persistence = &cluster.spec.persistence;
    if !persistence.enabled {
        return Vec::new();
    }
    vec![
        format!("-dd={DATA_DIR}"),
        format!("-dfs={}", persistence.fsync_interval_ms),
    ]
}

/// The StatefulSet's volume claim template when `spec.persistence` is enabled: one
/// ReadWriteOnce claim per pod of `size`, in `storageClassName` when given (`""` included, no
/// class), else in the Kubernetes cluster's default class. Only its name in the metadata:
/// the StatefulSet's controller labels the claims with the pods' selector, and a template
/// never changes, so it holds nothing a later operator could want to change.
pub fn data_claim_template(cluster: &Coolpy7Cluster) -> Option<PersistentVolumeClaim> {
    let persistence = &cluster.spec.persistence;
    persistence.enabled.then(|| PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: persistence.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(persistence.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    })
}

/// The seconds the kubelet gives a broker pod between SIGTERM and SIGKILL: its whole drain
/// (`spec.drain.graceSeconds`, or the broker's default) and the margin for what follows it.
pub fn termination_grace_seconds(cluster: &Coolpy7Cluster) -> i64 {
    let grace = cluster
        .spec
        .drain
        .as_ref()
        .and_then(|drain| drain.grace_seconds)
        .unwrap_or(BROKER_DRAIN_GRACE_SECONDS);
    grace.saturating_add(TERMINATION_GRACE_MARGIN_SECONDS)
}

/// The broker's command line: identity from the pod, seeds from the headless Service,
/// listeners, ports, MQTT 5 limits, access control, abuse limits, forwarding, drain and
/// persistence from the spec, then the user's extra flags (which may override the settings,
/// but not the listeners, ports, mode, files, drain grace or data directory: see
/// `reconcile`'s OWNED_FLAGS).
pub fn broker_args(cluster: &Coolpy7Cluster, cluster_domain: &str) -> Vec<String> {
    let ports = &cluster.spec.ports;
    let mut args = vec![
        "-nid=$(POD_NAME)".to_string(),
        "-cad=$(POD_IP)".to_string(),
        format!("-mbs={}", seeds(cluster, cluster_domain).join(",")),
    ];
    args.extend(listener_args(cluster));
    args.extend([
        format!("-hl=:{}", ports.http),
        format!("-crp={}", ports.gossip),
        format!("-csp={}", ports.sync),
        format!("--log-level={}", cluster.spec.log_level),
    ]);
    if let Some(mqtt) = &cluster.spec.mqtt {
        let limits = [
            ("-mka", mqtt.server_keep_alive),
            ("-mri", mqtt.receive_maximum),
            ("-mta", mqtt.topic_alias_maximum),
        ];
        args.extend(
            limits
                .into_iter()
                .filter_map(|(flag, value)| value.map(|value| format!("{flag}={value}"))),
        );
        let features = [
            ("-wsa", mqtt.wildcard_subscriptions),
            ("-sia", mqtt.subscription_identifiers),
        ];
        args.extend(
            features
                .into_iter()
                .filter_map(|(flag, value)| value.map(|value| format!("{flag}={value}"))),
        );
    }
    if let Some(auth) = &cluster.spec.auth {
        args.extend(auth_args(auth));
    }
    args.extend(limit_args(cluster));
    args.extend(forwarding_args(cluster));
    args.extend(drain_args(cluster));
    args.extend(persistence_args(cluster));
    args.extend(cluster.spec.args.iter().cloned());
    args
}

fn container_port(name: &str, port: i32, protocol: &str) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some(protocol.into()),
        ..ContainerPort::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn affinity(cluster: &Coolpy7Cluster) -> Affinity {
    if let Some(affinity) = &cluster.spec.affinity {
        return affinity.clone();
    }
    let term = PodAffinityTerm {
        label_selector: Some(LabelSelector {
            match_labels: Some(selector_labels(cluster)),
            ..LabelSelector::default()
        }),
        topology_key: HOSTNAME_TOPOLOGY.into(),
        ..PodAffinityTerm::default()
    };
    let anti = match cluster.spec.pod_anti_affinity {
        AntiAffinity::Soft => PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: term,
                },
            ]),
            ..PodAntiAffinity::default()
        },
        AntiAffinity::Hard => PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![term]),
            ..PodAntiAffinity::default()
        },
    };
    Affinity {
        pod_anti_affinity: Some(anti),
        ..Affinity::default()
    }
}

fn non_empty<T: Clone>(items: &[T]) -> Option<Vec<T>> {
    (!items.is_empty()).then(|| items.to_vec())
}

fn non_empty_map(map: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!map.is_empty()).then(|| map.clone())
}

/// The brokers. Pod names are the node ids; the cluster key comes from the Secret as an
/// environment variable (never in the arguments, where `ps` and the pod spec would show it).
pub fn stateful_set(cluster: &Coolpy7Cluster, cluster_domain: &str) -> StatefulSet {
    let spec = &cluster.spec;
    let ports = &spec.ports;
    let (csk_secret, csk_key) = csk_secret_ref(cluster);
    let mut env = vec![
        env_from_field("POD_NAME", "metadata.name"),
        env_from_field("POD_IP", "status.podIP"),
        EnvVar {
            name: "COOLPY7_CSK".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: csk_secret,
                    key: csk_key,
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
    ];
    env.extend(spec.env.iter().cloned());
    let mut pod_labels = labels(cluster);
    pod_labels.extend(spec.pod_labels.clone());
    // The selector's labels win over a user's pod label of the same name.
    pod_labels.extend(selector_labels(cluster));
    let mut container_ports: Vec<ContainerPort> = enabled_listeners(cluster)
        .into_iter()
        .map(|(kind, port)| container_port(kind.port_name(), port, "TCP"))
        .chain(coap_port(cluster).map(|coap| container_port("coap", coap, "UDP")))
        .collect();
    container_ports.extend([
        container_port("gossip", ports.gossip, "UDP"),
        container_port("sync", ports.sync, "UDP"),
        container_port("http", ports.http, "TCP"),
    ]);
    let mounted = mounted_objects(cluster);
    // Every key of the object, not `items`: the directory follows the object as it changes.
    let volumes: Vec<Volume> = mounted
        .iter()
        .map(|object| match object.kind {
            MountKind::Secret => Volume {
                name: object.volume.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(object.name.clone()),
                    default_mode: Some(SECRET_FILE_MODE),
                    optional: Some(false),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            },
            MountKind::ConfigMap => Volume {
                name: object.volume.into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: object.name.clone(),
                    default_mode: Some(SECRET_FILE_MODE),
                    optional: Some(false),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
        })
        .collect();
    let claim_template = data_claim_template(cluster);
    let volume_mounts: Vec<VolumeMount> = mounted
        .iter()
        .map(|object| VolumeMount {
            name: object.volume.into(),
            mount_path: object.dir.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        })
        // The claim's volume: the StatefulSet adds it to each pod from the template.
        .chain(claim_template.as_ref().map(|_| VolumeMount {
            name: DATA_VOLUME.into(),
            mount_path: DATA_DIR.into(),
            ..VolumeMount::default()
        }))
        .collect();
    let container = Container {
        name: BROKER_CONTAINER.into(),
        image: Some(format!("{}:{}", spec.image.repository, spec.image.tag)),
        image_pull_policy: Some(spec.image.pull_policy.as_str().into()),
        args: Some(broker_args(cluster, cluster_domain)),
        env: Some(env),
        ports: Some(container_ports),
        volume_mounts: non_empty(&volume_mounts),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        resources: spec.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    StatefulSet {
        metadata: metadata(cluster, cluster.name_any()),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(headless_service_name(cluster)),
            // Every pod starts at once: each needs the others as seeds, and readiness waits
            // for a join. (The policy is for scaling only: a scale-down stops the pods it
            // removes together, each draining; updates roll as below.)
            pod_management_policy: Some("Parallel".into()),
            // One pod at a time, from the highest ordinal: the next is stopped (and drains)
            // only once the one before is back, ready for `min_ready_seconds`. Said here rather
            // than left to the API server's default, so that the operator owns it.
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: None,
            }),
            min_ready_seconds: Some(spec.min_ready_seconds.unwrap_or(DEFAULT_MIN_READY_SECONDS)),
            persistent_volume_claim_retention_policy: claim_template.as_ref().map(|_| {
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(CLAIMS_WHEN_DELETED.into()),
                    when_scaled: Some(CLAIMS_WHEN_SCALED.into()),
                }
            }),
            selector: LabelSelector {
                match_labels: Some(selector_labels(cluster)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: non_empty_map(&spec.pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    affinity: Some(affinity(cluster)),
                    node_selector: non_empty_map(&spec.node_selector),
                    tolerations: non_empty(&spec.tolerations),
                    topology_spread_constraints: non_empty(&spec.topology_spread_constraints),
                    priority_class_name: spec.priority_class_name.clone(),
                    image_pull_secrets: non_empty(&spec.image_pull_secrets),
                    termination_grace_period_seconds: Some(termination_grace_seconds(cluster)),
                    // What the "restricted" Pod Security Standard asks of a pod.
                    volumes: non_empty(&volumes),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        // Only with files to read or a data volume to write, so that a cluster
                        // without TLS, auth or persistence keeps the pod template it had.
                        fs_group: (!volumes.is_empty() || claim_template.is_some())
                            .then_some(SECRET_FILES_GROUP),
                        // A data volume's files are given the group again only when its top
                        // directory lacks it, rather than one by one at every start.
                        fs_group_change_policy: claim_template
                            .as_ref()
                            .map(|_| "OnRootMismatch".into()),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: claim_template.map(|template| vec![template]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// The pod-template annotation that names the cluster key in use (by a hash), so that a new
/// key (rotated, or regenerated after the Secret was deleted) restarts every pod with it
/// rather than leaving old and new pods unable to talk.
pub const KEY_ANNOTATION: &str = "coolpy7.io/csk-sha256";

/// The first 16 hex digits of the key's SHA-256: enough to notice a change, useless to guess.
pub fn key_fingerprint(key: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(key)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `set` with the key fingerprint on its pod template.
pub fn with_key_fingerprint(mut set: StatefulSet, fingerprint: &str) -> StatefulSet {
    if let Some(spec) = set.spec.as_mut() {
        let meta = spec
            .template
            .metadata
            .get_or_insert_with(ObjectMeta::default);
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(KEY_ANNOTATION.into(), fingerprint.into());
    }
    set
}

/// The disruption budget, when enabled: the spec's bound, else at most one pod down at a time.
pub fn pod_disruption_budget(cluster: &Coolpy7Cluster) -> Option<PodDisruptionBudget> {
    let pdb = &cluster.spec.pod_disruption_budget;
    if !pdb.enabled {
        return None;
    }
    let (min_available, max_unavailable) = match (&pdb.min_available, &pdb.max_unavailable) {
        (None, None) => (None, Some(IntOrString::Int(1))),
        (min, max) => (min.clone(), max.clone()),
    };
    Some(PodDisruptionBudget {
        metadata: metadata(cluster, cluster.name_any()),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(cluster)),
                ..LabelSelector::default()
            }),
            min_available,
            max_unavailable,
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

#[cfg(test)]
mod tests;
