//! The `Coolpy7Cluster` custom resource (`coolpy7.io/v1alpha1`, short name `c7`): the spec a
//! user writes and the status the operator reports. These types are the source of truth; the
//! CRD YAML in `manifests/` and `charts/coolpy7/crds/` is generated from them by `crdgen`.
//!
//! Defaults live in the schema (the API server fills them in), so the operator reads a complete
//! spec; the one exception is the disruption budget, where `maxUnavailable: 1` applies only when
//! neither bound is given (a schema default would clash with a user's `minAvailable`).

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
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
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
    /// Extra broker flags, for settings the spec has no field for (e.g. `-mq=5000`); they come
    /// after the flags the spec's fields set, so they win over `mqtt`.
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
    /// Where MQTT clients connect: the LoadBalancer's ingress addresses.
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
    serde_yaml::to_string(&Coolpy7Cluster::crd())
}
