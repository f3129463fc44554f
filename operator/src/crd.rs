//! The `Coolpy7Cluster` custom resource (`coolpy7.io/v1alpha1`, short name `c7`): the spec a
//! user writes and the status the operator reports. These types are the source of truth; the
//! CRD YAML in `manifests/` and `charts/coolpy7/crds/` is generated from them by `crdgen`.
//!
//! Defaults live in the schema (the API server fills them in), so the operator reads a complete
//! spec; the exceptions are the disruption budget, where `maxUnavailable: 1` applies only when
//! neither bound is given (a schema default would clash with a user's `minAvailable`), and
//! `minReadySeconds`, which the operator reads as 10 when it is left out (as the broker reads
//! the settings of `mqtt`, `forwarding` or `drain` left out as its own defaults).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
    TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The image the operator runs when the spec names none (see the README for building it).
pub const DEFAULT_IMAGE: &str = "ghcr.io/coolpy7/coolpy7";

// clippy reads the repeated `type_ = "string"` of two printer columns as one attribute given
// twice.
#[allow(clippy::duplicated_attributes)]
/// A Coolpy7 cluster: a StatefulSet of brokers that find each other by gossip, a headless
/// Service for their seeds, a Service for MQTT clients, a cluster key and a disruption budget.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "coolpy7.io",
    version = "v1alpha1",
    kind = "Coolpy7Cluster",
    namespaced,
    shortname = "c7",
    status = "Coolpy7ClusterStatus",
    derive = "PartialEq",
    doc = "A clustered Coolpy7 MQTT broker",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!(self.listeners.tls.enabled || self.listeners.websocketTls.enabled) || \
     (has(self.tls) && has(self.tls.secretName))"
).message("listeners.tls and listeners.websocketTls need tls.secretName (a kubernetes.io/tls Secret)"))]
#[x_kube(validation = listener_port_rule(0))]
#[x_kube(validation = listener_port_rule(1))]
#[x_kube(validation = listener_port_rule(2))]
#[x_kube(validation = listener_port_rule(3))]
#[x_kube(validation = Rule::new(
    "!self.listeners.coap.enabled || \
     !(self.listeners.coap.port in [self.ports.gossip, self.ports.sync])"
).message("listeners.coap.port is already in use: the CoAP listener's UDP port must differ from \
           ports.gossip and ports.sync"))]
pub struct Coolpy7ClusterSpec {
    /// Number of broker pods.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,
    #[serde(default)]
    pub image: ImageSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// An existing Secret holding the cluster key; when absent the operator creates
    /// `<name>-csk` with 32 random bytes, once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csk: Option<CskSpec>,
    #[serde(default)]
    pub ports: PortsSpec,
    /// The listeners: MQTT over plain TCP on `ports.mqtt` (on by default), TLS, WebSocket and
    /// WebSocket over TLS, and CoAP publishing over UDP.
    #[serde(default)]
    pub listeners: ListenersSpec,
    /// Certificates for the `tls` and `websocketTls` listeners, and client certificates
    /// (mutual TLS). Used only when one of those listeners is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Every enabled listener expects a PROXY protocol (v1 or v2) header before MQTT, TLS or
    /// HTTP, so that the brokers see the clients' addresses behind a load balancer that sends
    /// one (configure it with `service.annotations`). A connection without the header is
    /// refused, in-cluster clients' included.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Who may connect (authentication at CONNECT) and what clients may do (authorization
    /// rules). Left out: every client is let in and may do anything, as before. The Secrets and
    /// the ConfigMap named here are mounted as directories, so an edit reaches the brokers, which
    /// re-read the files when they change, without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Abuse limits per client and per listener; a limit left out, or 0, is off (the broker's
    /// default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
    #[serde(default)]
    pub service: ServiceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra environment variables for the broker container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Replaces the operator's pod anti-affinity when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default)]
    pub pod_anti_affinity: AntiAffinity,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    #[serde(default)]
    pub pod_disruption_budget: PodDisruptionBudgetSpec,
    /// MQTT 5 limits the brokers announce to clients; a field left out keeps the broker's
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttSpec>,
    /// How the brokers forward messages to each other; a field left out keeps the broker's
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<ForwardingSpec>,
    /// What a broker does when its pod is stopped (a rolling update, a scale-down, a drained
    /// node): it drains (the broker flags `-dg`, `-dr` and `-dsr`), sending its clients to the
    /// other brokers; a field left out keeps the broker's default. The pods'
    /// `terminationGracePeriodSeconds` follows `graceSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainSpec>,
    /// Seconds a new or restarted broker pod must have been ready before a rolling update
    /// replaces the next one (the StatefulSet's `minReadySeconds`), so that the clients the
    /// previous pod sent away have reconnected, to it among others, before another pod drains.
    /// Left out: 10. A change does not restart the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_ready_seconds: Option<i32>,
    /// Durable state (the broker flags `-dd` and `-dfs`): each broker keeps its sessions, its
    /// queued and in-flight QoS 1 and 2 messages and the retained messages on a
    /// PersistentVolumeClaim of its own, `data-<name>-<ordinal>`, mounted at
    /// `/var/lib/coolpy7`, and reads them back when it starts again. Off by default: in memory
    /// only. A claim is deleted with the pod a scale-down removes (which hands its sessions
    /// over as it drains) and kept when the cluster is deleted. `enabled`, `size` and
    /// `storageClassName` make the StatefulSet's volume claim template, which never changes:
    /// changed on a running cluster, they leave it `Degraded` (reason `PersistenceImmutable`,
    /// saying what to do) and the StatefulSet as it was.
    #[serde(default)]
    pub persistence: PersistenceSpec,
    /// Extra broker flags, for settings the spec has no field for (e.g. `-mq=5000`); they come
    /// after the flags the spec's fields set, so they win over `mqtt`, `limits`, `forwarding`
    /// and `drain` (but for `-dg`, which the operator sets itself from `drain.graceSeconds`,
    /// and `-dd` and `-dfs`, which it sets from `persistence`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// The broker's log filter (`info`, `debug`, `coolpy7=debug,warn`, ...).
    #[serde(default = "default_log_level")]
    #[schemars(length(min = 1))]
    pub log_level: String,
}

fn default_replicas() -> i32 {
    3
}

fn default_log_level() -> String {
    "info".to_string()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    #[serde(default = "default_repository")]
    #[schemars(length(min = 1))]
    pub repository: String,
    /// Defaults to the operator's own version.
    #[serde(default = "default_tag")]
    #[schemars(length(min = 1))]
    pub tag: String,
    #[serde(default)]
    pub pull_policy: PullPolicy,
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            repository: default_repository(),
            tag: default_tag(),
            pull_policy: PullPolicy::default(),
        }
    }
}

fn default_repository() -> String {
    DEFAULT_IMAGE.to_string()
}

fn default_tag() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Where the cluster key comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CskSpec {
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// The key inside the Secret.
    #[serde(default = "default_csk_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

pub fn default_csk_key() -> String {
    "csk".to_string()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortsSpec {
    #[serde(default = "default_mqtt_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub mqtt: i32,
    #[serde(default = "default_gossip_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub gossip: i32,
    #[serde(default = "default_sync_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub sync: i32,
    #[serde(default = "default_http_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub http: i32,
}

impl Default for PortsSpec {
    fn default() -> Self {
        PortsSpec {
            mqtt: default_mqtt_port(),
            gossip: default_gossip_port(),
            sync: default_sync_port(),
            http: default_http_port(),
        }
    }
}

fn default_mqtt_port() -> i32 {
    1883
}
fn default_gossip_port() -> i32 {
    7946
}
fn default_sync_port() -> i32 {
    7947
}
fn default_http_port() -> i32 {
    8081
}

/// Which listeners the brokers open. Each has its own port, named on the pods and the client
/// Service as `mqtt`, `mqtts`, `ws`, `wss` (TCP) and `coap` (UDP). At least one MQTT listener
/// stays on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "self.mqtt.enabled || self.tls.enabled || self.websocket.enabled || self.websocketTls.enabled"
).message("enable at least one listener"))]
pub struct ListenersSpec {
    /// Plain MQTT over TCP (`-l`), on `ports.mqtt`.
    #[serde(default)]
    pub mqtt: MqttListenerSpec,
    /// MQTT over TLS (`-tl`); needs `tls.secretName`.
    #[serde(default)]
    pub tls: TlsListenerSpec,
    /// MQTT over WebSocket (`-wl`).
    #[serde(default)]
    pub websocket: WebSocketListenerSpec,
    /// MQTT over WebSocket over TLS (`-wsl`); needs `tls.secretName`.
    #[serde(default)]
    pub websocket_tls: WebSocketTlsListenerSpec,
    /// CoAP publishing over UDP (`-cl`): devices that cannot keep an MQTT connection POST
    /// messages to topics. Its port is on the pods and on the client Service as `coap`, UDP. A
    /// LoadBalancer Service with TCP and UDP ports needs Kubernetes 1.26 or later (mixed
    /// protocols, GA in 1.26) and a load balancer implementation that supports them; otherwise
    /// use `service.type` NodePort or ClusterIP. The PROXY protocol does not apply to it.
    #[serde(default)]
    pub coap: CoapListenerSpec,
    /// The HTTP path of the WebSocket listeners (`-wsp`): absolute, without a query, fragment
    /// or spaces, as the broker requires.
    #[serde(default = "default_websocket_path")]
    #[schemars(regex(pattern = r"^/[^?#\s]*$"), length(max = 256))]
    pub websocket_path: String,
}

impl Default for ListenersSpec {
    fn default() -> Self {
        ListenersSpec {
            mqtt: MqttListenerSpec::default(),
            tls: TlsListenerSpec::default(),
            websocket: WebSocketListenerSpec::default(),
            websocket_tls: WebSocketTlsListenerSpec::default(),
            coap: CoapListenerSpec::default(),
            websocket_path: default_websocket_path(),
        }
    }
}

pub fn default_websocket_path() -> String {
    "/mqtt".to_string()
}

/// The plain MQTT listener; its port is `ports.mqtt`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttListenerSpec {
    /// False turns plain MQTT off (`-l=nil`), e.g. to accept TLS clients only.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for MqttListenerSpec {
    fn default() -> Self {
        MqttListenerSpec { enabled: true }
    }
}

// One type per optional listener, although they look alike: the API server fills in a
// missing port from the type's schema, and each listener has its own default port.

/// The MQTT over TLS listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsListenerSpec {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_tls_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for TlsListenerSpec {
    fn default() -> Self {
        TlsListenerSpec {
            enabled: false,
            port: default_tls_port(),
        }
    }
}

fn default_tls_port() -> i32 {
    8883
}

/// The MQTT over WebSocket listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketListenerSpec {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_websocket_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for WebSocketListenerSpec {
    fn default() -> Self {
        WebSocketListenerSpec {
            enabled: false,
            port: default_websocket_port(),
        }
    }
}

fn default_websocket_port() -> i32 {
    8083
}

/// The MQTT over WebSocket over TLS listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketTlsListenerSpec {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_websocket_tls_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for WebSocketTlsListenerSpec {
    fn default() -> Self {
        WebSocketTlsListenerSpec {
            enabled: false,
            port: default_websocket_tls_port(),
        }
    }
}

fn default_websocket_tls_port() -> i32 {
    8084
}

/// The CoAP listener (UDP). Not an MQTT listener: at least one of those stays on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CoapListenerSpec {
    #[serde(default)]
    pub enabled: bool,
    /// A UDP port: it may share a number with a TCP listener, but not with `ports.gossip` or
    /// `ports.sync`.
    #[serde(default = "default_coap_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for CoapListenerSpec {
    fn default() -> Self {
        CoapListenerSpec {
            enabled: false,
            port: default_coap_port(),
        }
    }
}

fn default_coap_port() -> i32 {
    5683
}

/// The listeners as CEL sees them on the spec: (whether it is on, its port, the port's field
/// in messages). Defaults are applied before validation, so every one of these is present.
const LISTENERS_IN_CEL: [(&str, &str, &str); 4] = [
    (
        "self.listeners.mqtt.enabled",
        "self.ports.mqtt",
        "ports.mqtt",
    ),
    (
        "self.listeners.tls.enabled",
        "self.listeners.tls.port",
        "listeners.tls.port",
    ),
    (
        "self.listeners.websocket.enabled",
        "self.listeners.websocket.port",
        "listeners.websocket.port",
    ),
    (
        "self.listeners.websocketTls.enabled",
        "self.listeners.websocketTls.port",
        "listeners.websocketTls.port",
    ),
];

/// The CEL rule that listener `index` of [`LISTENERS_IN_CEL`], when enabled, has a port of its
/// own: not another enabled listener's, nor gossip's, sync's or the health endpoint's. A
/// disabled listener's port may be anything (its default stays put while it is off).
fn listener_port_rule(index: usize) -> kube::core::Rule {
    let (enabled, port, field) = LISTENERS_IN_CEL[index];
    let mut taken = vec!["[self.ports.gossip, self.ports.sync, self.ports.http]".to_string()];
    for (other, (other_enabled, other_port, _)) in LISTENERS_IN_CEL.iter().enumerate() {
        if other != index {
            taken.push(format!("({other_enabled} ? [{other_port}] : [])"));
        }
    }
    kube::core::Rule::new(format!("!{enabled} || !({port} in {})", taken.join(" + "))).message(
        kube::core::Message::Message(format!(
            "{field} is already in use: an enabled listener's port must differ from the other \
             enabled listeners' and from ports.gossip, ports.sync and ports.http"
        )),
    )
}

/// Certificates: the brokers' own for the TLS listeners, and the CAs client certificates are
/// verified against. The Secrets are mounted as directories, so a renewed certificate (e.g. by
/// cert-manager) reaches the brokers, which reload it, without a restart.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.verifyClients) || self.verifyClients == 'none' || has(self.clientCASecretName)"
).message("verifyClients optional or required needs clientCASecretName"))]
#[x_kube(validation = Rule::new(
    "self.usernameFromCertificate == 'off' || (has(self.clientCASecretName) && \
     (!has(self.verifyClients) || self.verifyClients != 'none'))"
).message("usernameFromCertificate needs client certificates: set clientCASecretName, and \
           verifyClients other than none"))]
pub struct TlsSpec {
    /// A `kubernetes.io/tls` Secret with `tls.crt` (the certificate chain, the brokers' own
    /// first) and `tls.key`, such as cert-manager writes (`-tc`, `-tk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// A Secret holding the PEM bundle of the CAs that client certificates must chain to
    /// (`-tca`). It may be `secretName` itself, whose `ca.crt` cert-manager fills in.
    #[serde(
        rename = "clientCASecretName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(min = 1, max = 253))]
    pub client_ca_secret_name: Option<String>,
    /// The key in `clientCASecretName` holding the CA bundle.
    #[serde(rename = "clientCAKey", default = "default_client_ca_key")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(min = 1, max = 253))]
    pub client_ca_key: String,
    /// Whether TLS clients must present a certificate (`-tv`): `none`, `optional` (verified
    /// when given) or `required`. Left out: `required` with `clientCASecretName`, else `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_clients: Option<VerifyClients>,
    /// The verified client certificate's subject Common Name (`cn`) or first Subject
    /// Alternative Name (`san`) becomes the MQTT username (`-tcn`); `off` keeps the one CONNECT
    /// carries. Quote `'off'` in YAML, where a bare off reads as false.
    #[serde(default)]
    pub username_from_certificate: UsernameFromCertificate,
}

pub fn default_client_ca_key() -> String {
    "ca.crt".to_string()
}

/// Client certificate verification on the TLS listeners.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VerifyClients {
    None,
    Optional,
    Required,
}

impl VerifyClients {
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyClients::None => "none",
            VerifyClients::Optional => "optional",
            VerifyClients::Required => "required",
        }
    }
}

/// What of a verified client certificate becomes the MQTT username.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UsernameFromCertificate {
    #[default]
    Off,
    Cn,
    San,
}

impl UsernameFromCertificate {
    pub fn as_str(self) -> &'static str {
        match self {
            UsernameFromCertificate::Off => "off",
            UsernameFromCertificate::Cn => "cn",
            UsernameFromCertificate::San => "san",
        }
    }
}

/// Access control (the broker flags `-as`, `-jskf`, `-jpk`, `-pwf`, `-ha`, `-htf`, `-hat`,
/// `-hac`, `-acl`, `-acld`). Each file is mounted from its Secret or ConfigMap as a whole
/// directory under `/etc/coolpy7/auth/` (never `subPath`, which would never see an edit), and the
/// brokers re-read it when its content changes. A Secret or ConfigMap that is missing, or lacks
/// its key, leaves the cluster `Degraded` (`AuthSecretMissing`, `AuthConfigMapMissing`) with the
/// pods as they were.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "self.mode != 'jwt' || has(self.jwtSecret) != has(self.jwtPublicKey)"
).message("mode jwt needs one of jwtSecret (an HMAC secret, for HS* tokens) and jwtPublicKey \
           (a PEM public key, for RS*, PS*, ES* and EdDSA tokens), not both"))]
#[x_kube(validation = Rule::new("self.mode != 'password' || has(self.passwordSecret)")
    .message("mode password needs passwordSecret (a Secret of user:hash lines)"))]
#[x_kube(validation = Rule::new("self.mode != 'http' || has(self.httpHook)")
    .message("mode http needs httpHook.url (the authentication service)"))]
pub struct AuthSpec {
    /// How CONNECT's credentials are checked (`-as`): `none` lets every client in, `jwt` takes
    /// the password as a JSON Web Token, `http` asks `httpHook.url`, `password` looks the user
    /// up in `passwordSecret`.
    #[serde(default)]
    pub mode: AuthMode,
    /// With mode `jwt`: the Secret key holding the HMAC secret HS256/384/512 tokens are signed
    /// with (`-jskf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<SecretKeyRef>,
    /// With mode `jwt`: the Secret key holding the PEM public key RS*, PS*, ES256, ES384 or
    /// EdDSA tokens are verified with (`-jpk`). A Secret rather than a ConfigMap, although a
    /// public key is no secret, so that every credential comes from one kind of object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_public_key: Option<SecretKeyRef>,
    /// With mode `password`: the Secret key holding the password file, one `user:hash` line
    /// per user (`-pwf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<SecretKeyRef>,
    /// The ConfigMap key holding the authorization rules (`-acl`), in any mode: which topics
    /// a user, client id or address may publish and subscribe to.
    #[serde(
        rename = "aclConfigMap",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub acl_config_map: Option<ConfigMapKeyRef>,
    /// The decision when no rule matches (`-acld`): `allow` or `deny`. Left out: the broker's
    /// default, `deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl_default: Option<AclDefault>,
    /// With mode `http`: the service that decides on each CONNECT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_hook: Option<HttpHookSpec>,
}

/// How clients authenticate.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    None,
    Jwt,
    Http,
    Password,
}

impl AuthMode {
    /// The value of the broker's `-as` flag.
    pub fn flag_value(self) -> u8 {
        match self {
            AuthMode::None => 0,
            AuthMode::Jwt => 1,
            AuthMode::Http => 2,
            AuthMode::Password => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Jwt => "jwt",
            AuthMode::Http => "http",
            AuthMode::Password => "password",
        }
    }
}

/// What the broker decides when no authorization rule matches.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AclDefault {
    Allow,
    Deny,
}

impl AclDefault {
    pub fn as_str(self) -> &'static str {
        match self {
            AclDefault::Allow => "allow",
            AclDefault::Deny => "deny",
        }
    }
}

/// A key of a Secret in the cluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key inside it: the file the broker reads.
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(min = 1, max = 253))]
    pub key: String,
}

/// A key of a ConfigMap in the cluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// The ConfigMap's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key inside it (under `data` or `binaryData`): the file the broker reads.
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(min = 1, max = 253))]
    pub key: String,
}

/// The HTTP authentication service (`-ha`, `-htf`, `-hat`, `-hac`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpHookSpec {
    /// Where the brokers send each CONNECT's credentials (`-ha`): an `http://` URL without
    /// credentials in it (the brokers do not speak HTTPS to it yet; use `tokenSecret` for a
    /// token).
    #[schemars(regex(pattern = r"^http://[^\s/@]+(/\S*)?$"), length(max = 2048))]
    pub url: String,
    /// A Secret key holding the token the brokers send to the service as `Authorization:
    /// Bearer` (`-htf`), so that it knows them. Left out: the broker's default token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<SecretKeyRef>,
    /// Seconds the brokers wait for an answer, 1 to 60 (`-hat`); no answer denies. The
    /// broker's default is 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: Option<i32>,
    /// Seconds the brokers reuse an answer for the same credentials, 0 (ask every time) to
    /// 86400 (`-hac`). The broker's default is 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub cache_seconds: Option<i32>,
}

/// Abuse limits (the broker flags `-pl`, `-psl`, `-dt`, `-cr`, `-prm`, `-prb`), on each
/// broker. Each one left out, or 0, is off: the broker's default.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// The fewest seconds between a client's PINGREQs, up to 86400 (`-pl`); a client pinging
    /// faster is closed (and refused for `banSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub ping_interval_seconds: Option<i32>,
    /// The fewest milliseconds between a client's PUBLISHes, up to 86400000 (`-psl`); a client
    /// publishing faster is closed (and refused for `banSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400000))]
    pub publish_interval_millis: Option<i32>,
    /// Seconds a client closed by `pingIntervalSeconds` or `publishIntervalMillis` is refused
    /// (CONNACK 0x05, MQTT 5 0x9F), up to a year, 31536000 (`-dt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31536000))]
    pub ban_seconds: Option<i32>,
    /// New connections each listener accepts a second (a burst of one second's worth); beyond
    /// it new sockets are closed at once (`-cr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub connection_rate: Option<i32>,
    /// What each client may publish a second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_rate: Option<PublishRateSpec>,
}

/// A client's publishing rate: a faster client is not read from until it is back within it
/// (nothing is dropped). Each one left out, or 0, is off.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishRateSpec {
    /// PUBLISH packets a second, per client (`-prm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub messages: Option<i32>,
    /// PUBLISH payload bytes a second, per client (`-prb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub bytes: Option<i64>,
}

/// MQTT 5 limits and features (the broker flags `-mka`, `-mri`, `-mta`, `-wsa` and `-sia`).
/// Each one left out keeps the broker's default.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttSpec {
    /// Server Keep Alive (`-mka`): the longest keepalive, in seconds, a client may use; a
    /// client asking for more, or for none, is held to this. 0 = no cap (the broker's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub server_keep_alive: Option<i32>,
    /// Receive Maximum the broker announces (`-mri`): QoS 2 messages a client may have
    /// awaiting PUBREL. The broker's default is 65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub receive_maximum: Option<i32>,
    /// Topic Alias Maximum, each way (`-mta`): aliases a client may set, and at most this
    /// many the broker sets on its deliveries. 0 = none; the broker's default is 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub topic_alias_maximum: Option<i32>,
    /// Wildcard subscriptions (`-wsa`): whether topic filters may hold `+` or `#`. When false,
    /// CONNACK says so, an MQTT 5 SUBSCRIBE with one gets DISCONNECT 0xA2 and a 3.1.1 one
    /// SUBACK 0x80 for that filter. The broker's default is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wildcard_subscriptions: Option<bool>,
    /// Subscription identifiers (`-sia`): whether a SUBSCRIBE may carry one. When false,
    /// CONNACK says so and a SUBSCRIBE with one gets DISCONNECT 0xA1. The broker's default is
    /// true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_identifiers: Option<bool>,
}

/// Forwarding between the brokers (the broker flags `-csb`, `-csl` and `-ssp`). Each one left
/// out keeps the broker's default.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForwardingSpec {
    /// Bytes each broker holds per peer for QoS 1 and 2 messages that peer has not
    /// acknowledged yet (`-csb`), at least 65536. Publishers wait once half of it is held, and
    /// beyond it such messages for that peer are dropped (and counted). The broker's default is
    /// 16777216 (16 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 65536))]
    pub buffer_bytes: Option<i64>,
    /// The largest message record forwarded to the other brokers, in bytes (`-csl`): topic +
    /// payload + 7, plus the MQTT 5 properties + 2 and a Message Expiry's 4 when present. A
    /// larger message reaches only the subscribers on the broker it was published to. 0 = no
    /// limit (the broker's default), otherwise at least 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    #[x_kube(validation = Rule::new("self == 0 || self >= 64")
        .message("forwarding.recordLimitBytes is 0 (no limit) or at least 64 bytes"))]
    pub record_limit_bytes: Option<i64>,
    /// Which broker serves a shared subscription group (`$share/<group>/<filter>`,
    /// `$queue/<filter>`) whose members are spread over several brokers (`-ssp`); each message
    /// reaches one member of the group in the whole cluster either way. `local`: a member on
    /// the broker the message was published to when one is online there, else one on another
    /// broker (the broker's default). `cluster`: the brokers with members take turns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_subscriptions: Option<SharedSubscriptions>,
}

/// Draining on SIGTERM (the broker flags `-dg`, `-dr` and `-dsr`): the broker's `/readyz`
/// answers 503 at once, its listeners close and its clients are disconnected `disconnectRate` a
/// second, whoever is left when `graceSeconds` runs out at once; they reconnect through the
/// client Service to the other brokers. Each one left out keeps the broker's default. A change
/// is a change of the pod template: a rolling update, in which each old pod drains with the
/// settings it was started with.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// The longest a drain takes, in seconds, 0 to 86400 (`-dg`): whoever is still connected
    /// then is disconnected at once; 0 disconnects everyone at once. The pods'
    /// `terminationGracePeriodSeconds` is this plus 20 (for the broker's last writes, the other
    /// brokers taking in its sessions, and its leaving the cluster). The broker's default is
    /// 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub grace_seconds: Option<i64>,
    /// Clients disconnected a second while draining (`-dr`), so that they reconnect to the
    /// other brokers in a stream rather than a storm; 0 disconnects them all at once. The
    /// broker's default is 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4_294_967_295_i64))]
    pub disconnect_rate: Option<i64>,
    /// The Server Reference MQTT 5 clients are sent when a drain disconnects them (`-dsr`),
    /// with DISCONNECT 0x9C "Use another server" instead of 0x8B "Server shutting down", e.g.
    /// the client Service's address as `host:port`. At most 65535 bytes of UTF-8, without NUL.
    /// Left out: 0x8B, without a reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65535), regex(pattern = r"^[^\x00]*$"))]
    #[x_kube(validation = Rule::new("size(bytes(self)) <= 65535")
        .message("drain.serverReference is at most 65535 bytes of UTF-8"))]
    pub server_reference: Option<String>,
}

/// A Kubernetes quantity of bytes, as `persistence.size` takes it: a number and at most one
/// suffix, binary (`Ki` .. `Ei`), decimal (`k`, `M` .. `E`) or a decimal exponent (`e9`). The
/// API server would take `m`, `u`, `n` and negative exponents too, but a size with them is a
/// fraction of a byte, or a mistake (`512m` for `512Mi`).
pub const SIZE_PATTERN: &str = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[kMGTPE]|[eE]\+?[0-9]+)?$";

/// A StorageClass name (a DNS subdomain), or `""`, a claim's "no class".
pub const STORAGE_CLASS_PATTERN: &str =
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$";

/// The longest `persistence.fsyncIntervalMs` the broker takes (`-dfs`).
pub const MAX_FSYNC_INTERVAL_MS: i32 = 10_000;

/// Durable state (the broker flags `-dd` and `-dfs`); see `Coolpy7ClusterSpec::persistence`.
/// When enabled, the StatefulSet gets the volume claim template `data` (ReadWriteOnce, `size`,
/// `storageClassName`), the broker container mounts it at `/var/lib/coolpy7`, and the claims'
/// retention policy deletes a claim on scale-down and keeps it when the cluster is deleted
/// (`children::CLAIMS_WHEN_SCALED`, `CLAIMS_WHEN_DELETED`). `fsyncIntervalMs` is a flag and
/// may change at any time (a rolling update); the other fields may not (see
/// `reconcile::persistence_change_problem`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistenceSpec {
    /// Whether each broker keeps its state on a volume of its own (`-dd=/var/lib/coolpy7`).
    /// False: in memory only, lost with the pod unless handed over to another broker.
    #[serde(default)]
    pub enabled: bool,
    /// The size of each broker's claim: a quantity of bytes such as `1Gi`, `500M` or `1.5Ti`
    /// (suffixes Ki, Mi, Gi, Ti, Pi, Ei and k, M, G, T, P, E).
    #[serde(default = "default_persistence_size")]
    #[schemars(length(min = 1, max = 64), regex(pattern = SIZE_PATTERN))]
    pub size: String,
    /// The StorageClass of the claims. Left out: the Kubernetes cluster's default class; `""`:
    /// no class, so that only PersistentVolumes without one (made beforehand) are bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = STORAGE_CLASS_PATTERN))]
    pub storage_class_name: Option<String>,
    /// How the writes reach the disk (`-dfs`), 0 to 10000. 0 (the default): every
    /// acknowledgement (PUBACK, PUBREC, SUBACK, ...) waits for its write to be fsynced.
    /// N: acknowledged once written to the operating system, fsynced every N milliseconds;
    /// a crash of the broker loses nothing, a power loss of its node up to the last N ms.
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_FSYNC_INTERVAL_MS))]
    pub fsync_interval_ms: i32,
}

impl Default for PersistenceSpec {
    fn default() -> Self {
        PersistenceSpec {
            enabled: false,
            size: default_persistence_size(),
            storage_class_name: None,
            fsync_interval_ms: 0,
        }
    }
}

pub fn default_persistence_size() -> String {
    "1Gi".to_string()
}

/// Where a shared subscription group's messages go (`-ssp`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SharedSubscriptions {
    Local,
    Cluster,
}

impl SharedSubscriptions {
    /// The value of the broker's `-ssp` flag.
    pub fn as_str(self) -> &'static str {
        match self {
            SharedSubscriptions::Local => "local",
            SharedSubscriptions::Cluster => "cluster",
        }
    }
}

/// The Service MQTT clients connect to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_class: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancer_source_ranges: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<TrafficPolicy>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    #[default]
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TrafficPolicy {
    Cluster,
    Local,
}

impl TrafficPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficPolicy::Cluster => "Cluster",
            TrafficPolicy::Local => "Local",
        }
    }
}

/// How strongly broker pods avoid sharing a node.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AntiAffinity {
    /// Preferred: pods spread when they can.
    #[default]
    Soft,
    /// Required: a pod stays pending rather than share a node.
    Hard,
}

/// At most one of `minAvailable` and `maxUnavailable`; with neither, `maxUnavailable: 1`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.minAvailable) && has(self.maxUnavailable))").message("set minAvailable or maxUnavailable, not both"))]
pub struct PodDisruptionBudgetSpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

impl Default for PodDisruptionBudgetSpec {
    fn default() -> Self {
        PodDisruptionBudgetSpec {
            enabled: true,
            min_available: None,
            max_unavailable: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// What the operator last saw.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Coolpy7ClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// The pods' label selector, for the scale subresource (`kubectl scale`, autoscalers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    // Always written, so that a merge patch can empty it.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `-mbs` seeds the pods get.
    // Always written, so that a merge patch can empty it.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// The Secret the cluster key is read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csk_secret: Option<String>,
    /// Where MQTT clients connect: for each of the LoadBalancer's ingress addresses,
    /// `address:port` of the plain MQTT listener and `mqtts://`, `ws://`, `wss://` and
    /// `coap://` URLs of the others that are enabled.
    // Always written, so that a merge patch can empty it.
    #[serde(default)]
    pub endpoints: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Pending,
    Progressing,
    Running,
    Degraded,
}

/// The CRD as `crdgen` prints it (and as `manifests/crd.yaml` must read).
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let yaml = serde_yaml::to_string(&Coolpy7Cluster::crd())?;
    Ok(quote_yaml11_booleans(&yaml))
}

/// Words that YAML 1.1 reads as booleans when bare: serde_yaml writes YAML 1.2, where they are
/// strings, but kubectl, Helm (go-yaml v2) and PyYAML read YAML 1.1, where the enum value and
/// default `off` of `tls.usernameFromCertificate` would become `false`.
const YAML11_BOOLEANS: [&str; 22] = [
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
    "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
];

/// `yaml` with every bare string value that YAML 1.1 would read as a boolean in single
/// quotes; the text of block scalars (`|-` descriptions) is left as it is. Only for what
/// serde_yaml writes: one `key: value` or `- value` per line. A real boolean is written `true`
/// or `false`, which both readers agree on, so those two stay bare.
fn quote_yaml11_booleans(yaml: &str) -> String {
    let mut out = String::with_capacity(yaml.len());
    // The indentation of the key whose block scalar the following deeper lines belong to.
    let mut block_indent: Option<usize> = None;
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(key_indent) = block_indent {
            if line.trim().is_empty() || indent > key_indent {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            block_indent = None;
        }
        let trimmed = line.trim_start();
        // `- ` items may hold a key (`- key: value`): look at what follows the dashes.
        let item = trimmed.trim_start_matches("- ");
        let value_at = match item.find(": ") {
            Some(colon) => line.len() - item.len() + colon + 2,
            None if item.len() < trimmed.len() => line.len() - item.len(),
            None => line.len(),
        };
        let value = &line[value_at..];
        if value.starts_with('|') || value.starts_with('>') {
            block_indent = Some(indent);
        }
        if YAML11_BOOLEANS.contains(&value) && !matches!(value, "true" | "false") {
            out.push_str(&line[..value_at]);
            out.push_str(&format!("'{value}'"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml11_booleans_are_quoted_outside_block_scalars() {
        let yaml = "a: off\nb:\n- off\n- cn\n- 'off'\nc: true\nd: |-\n  a line\n  - off\ne: no\n- key: on\nf: offline\n";
        assert_eq!(
            quote_yaml11_booleans(yaml),
            "a: 'off'\nb:\n- 'off'\n- cn\n- 'off'\nc: true\nd: |-\n  a line\n  - off\ne: 'no'\n- key: 'on'\nf: offline\n"
        );
    }

    #[test]
    fn the_crd_reads_the_same_in_yaml_1_1() {
        let yaml = crd_yaml().expect("the CRD serialises");
        assert!(yaml.contains("default: 'off'"), "the default is quoted");
        assert!(yaml.contains("- 'off'"), "the enum value is quoted");
        // serde_yaml reads the quoted text back to the same CRD.
        let back: serde_json::Value = serde_yaml::from_str(&yaml).expect("YAML");
        use kube::CustomResourceExt;
        assert_eq!(
            back,
            serde_json::to_value(Coolpy7Cluster::crd()).expect("JSON")
        );
    }
}
