//! Every object the builders produce validates against the Kubernetes JSON schemas in strict
//! mode, so a misspelt or misplaced field fails here rather than at `kubectl apply`. Uses PyPI's
//! `kubernetes-validate` (offline; `.ci/run` installs it).

use std::path::PathBuf;
use std::process::Command;

use coolpy7_operator::children;
use coolpy7_operator::crd::{Coolpy7Cluster, Coolpy7ClusterSpec};
use serde::Deserialize;
use serde_json::json;

/// The Kubernetes version the operator's k8s-openapi feature targets.
const KUBERNETES_VERSION: &str = "1.33.0";

fn cluster_with(spec: serde_json::Value) -> Coolpy7Cluster {
    let spec: Coolpy7ClusterSpec = serde_json::from_value(spec).expect("a valid spec");
    let mut cluster = Coolpy7Cluster::new("mq", spec);
    cluster.metadata.namespace = Some("iot".into());
    cluster.metadata.uid = Some("6a1c5c9e-0d4e-4f0b-9a53-0e6f3c1b2a77".into());
    cluster
}

fn documents(cluster: &Coolpy7Cluster) -> Vec<String> {
    let mut docs = vec![
        serde_yaml::to_string(&children::csk_secret(cluster, &[7; children::CSK_BYTES])),
        serde_yaml::to_string(&children::headless_service(cluster)),
        serde_yaml::to_string(&children::client_service(cluster)),
        serde_yaml::to_string(&children::stateful_set(cluster, "cluster.local")),
    ];
    if let Some(pdb) = children::pod_disruption_budget(cluster) {
        docs.push(serde_yaml::to_string(&pdb));
    }
    docs.into_iter()
        .map(|doc| doc.expect("serialises"))
        .collect()
}

#[test]
fn every_child_validates_strictly_against_the_kubernetes_schemas() {
    let variants = [
        json!({}),
        json!({"replicas": 5, "podAntiAffinity": "hard", "csk": {"secretName": "k", "key": "v"},
               "service": {"type": "NodePort", "externalTrafficPolicy": "Local"},
               "podDisruptionBudget": {"minAvailable": "60%"}}),
        json!({"service": {"type": "LoadBalancer", "annotations": {"a": "b"}, "labels": {"c": "d"},
                           "loadBalancerClass": "x", "loadBalancerSourceRanges": ["10.0.0.0/8"]},
               "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "500m"}},
               "env": [{"name": "COOLPY7_MQ", "value": "5000"}],
               "nodeSelector": {"pool": "mqtt"},
               "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "mqtt", "effect": "NoSchedule"}],
               "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                              "whenUnsatisfiable": "ScheduleAnyway"}],
               "podAnnotations": {"prometheus.io/scrape": "true"}, "podLabels": {"team": "iot"},
               "priorityClassName": "high", "imagePullSecrets": [{"name": "registry"}],
               "mqtt": {"serverKeepAlive": 300, "receiveMaximum": 100, "topicAliasMaximum": 0},
               "forwarding": {"bufferBytes": 33554432, "recordLimitBytes": 0},
               "drain": {"graceSeconds": 120, "disconnectRate": 200,
                         "serverReference": "mqtt.example.org:1883"},
               "minReadySeconds": 30,
               "args": ["-mq=5000"], "logLevel": "debug",
               "podDisruptionBudget": {"maxUnavailable": 2}}),
        json!({"service": {"type": "ClusterIP"}, "podDisruptionBudget": {"enabled": false}}),
        // Every listener, certificates and client CA mounted, the PROXY protocol.
        json!({"listeners": {"tls": {"enabled": true}, "websocket": {"enabled": true},
                             "websocketTls": {"enabled": true, "port": 443}, "websocketPath": "/ws"},
               "tls": {"secretName": "mq-cert", "clientCASecretName": "iot-ca", "clientCAKey": "ca.pem",
                       "verifyClients": "optional", "usernameFromCertificate": "cn"},
               "proxyProtocol": true}),
        // TLS only, the plain listener off.
        json!({"listeners": {"mqtt": {"enabled": false}, "tls": {"enabled": true}},
               "tls": {"secretName": "mq-cert"}}),
        // JWT with an ACL ConfigMap beside a TLS certificate, CoAP on a LoadBalancer (UDP and
        // TCP ports on one Service), every abuse limit.
        json!({"listeners": {"tls": {"enabled": true}, "coap": {"enabled": true}},
               "tls": {"secretName": "mq-cert"},
               "auth": {"mode": "jwt", "jwtSecret": {"name": "mq-jwt", "key": "hmac"},
                        "aclConfigMap": {"name": "mq-acl", "key": "acl"}, "aclDefault": "deny"},
               "limits": {"pingIntervalSeconds": 5, "publishIntervalMillis": 10, "banSeconds": 60,
                          "connectionRate": 100, "publishRate": {"messages": 50, "bytes": 65536}}}),
        // Passwords, and an HTTP service with its token.
        json!({"auth": {"mode": "password",
                        "passwordSecret": {"name": "mq-users", "key": "passwords"}}}),
        // A data volume per pod beside a mounted certificate, in a named class.
        json!({"persistence": {"enabled": true, "size": "20Gi", "storageClassName": "fast-ssd",
                               "fsyncIntervalMs": 100},
               "listeners": {"tls": {"enabled": true}}, "tls": {"secretName": "mq-cert"}}),
        json!({"persistence": {"enabled": true, "storageClassName": ""}}),
        json!({"auth": {"mode": "http", "httpHook": {"url": "http://auth.iot.svc/mqtt",
                                                    "tokenSecret": {"name": "hook", "key": "token"},
                                                    "timeoutSeconds": 3, "cacheSeconds": 30}},
               "listeners": {"coap": {"enabled": true, "port": 5684}},
               "service": {"type": "NodePort"}}),
    ];
    let dir = std::env::temp_dir().join(format!("coolpy7-operator-schemas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut files: Vec<PathBuf> = Vec::new();
    for (i, spec) in variants.into_iter().enumerate() {
        for (j, doc) in documents(&cluster_with(spec)).into_iter().enumerate() {
            let file = dir.join(format!("variant{i}-object{j}.yaml"));
            std::fs::write(&file, doc).expect("write");
            files.push(file);
        }
    }
    let manifests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    files.push(manifests.join("crd.yaml"));
    files.push(manifests.join("operator.yaml"));
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
        .args(&files)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let output = output.unwrap_or_else(|e| {
        panic!(
            "cannot run kubernetes-validate ({e}); install it with `pip install \
             kubernetes-validate` (.ci/run does)"
        )
    });
    assert!(
        output.status.success(),
        "kubernetes-validate refused the operator's objects:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_example_cluster_is_a_valid_coolpy7_cluster() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/example-cluster.yaml");
    let text = std::fs::read_to_string(&path).expect("example-cluster.yaml");
    let cluster: Coolpy7Cluster = serde_yaml::from_str(&text).expect("parses as a Coolpy7Cluster");
    assert_eq!(cluster.spec.replicas, 3);
    assert!(coolpy7_operator::reconcile::spec_problem(&cluster).is_none());
}

/// (API group, resource) -> verbs the operator uses: the watches of the controller (get, list,
/// watch), the applies (create, patch), the key Secret (get, create), the ACL ConfigMap's read
/// (get), the budget's delete, the status patch and the Events.
const USED: [(&str, &str, &[&str]); 8] = [
    ("coolpy7.io", "coolpy7clusters", &["get", "list", "watch"]),
    ("coolpy7.io", "coolpy7clusters/status", &["get", "patch"]),
    (
        "apps",
        "statefulsets",
        &["get", "list", "watch", "create", "patch"],
    ),
    ("", "services", &["get", "list", "watch", "create", "patch"]),
    ("", "secrets", &["get", "list", "watch", "create"]),
    ("", "configmaps", &["get"]),
    (
        "policy",
        "poddisruptionbudgets",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    ("events.k8s.io", "events", &["create", "patch"]),
];

#[test]
fn the_cluster_role_grants_exactly_what_the_operator_calls() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/operator.yaml");
    let text = std::fs::read_to_string(&path).expect("operator.yaml");
    let role = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_json::Value::deserialize(doc).expect("YAML"))
        .find(|doc| doc["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let mut granted: Vec<(String, String, Vec<String>)> = Vec::new();
    for rule in role["rules"].as_array().expect("rules") {
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .expect("a list")
                .iter()
                .map(|s| s.as_str().expect("a string").to_string())
                .collect()
        };
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                granted.push((group.clone(), resource, strings(&rule["verbs"])));
            }
        }
    }
    let mut expected: Vec<(String, String, Vec<String>)> = USED
        .iter()
        .map(|(g, r, v)| {
            (
                g.to_string(),
                r.to_string(),
                v.iter().map(|s| s.to_string()).collect(),
            )
        })
        .collect();
    granted.sort();
    expected.sort();
    assert_eq!(
        granted, expected,
        "the ClusterRole grants more or less than the operator uses"
    );
}
