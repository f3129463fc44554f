//! The CRD that `crdgen` prints is the one in `manifests/` and in the chart, and it has the
//! parts kubernetes.md asks for.

use std::path::PathBuf;

use coolpy7_operator::crd::{crd_yaml, Coolpy7Cluster};
use kube::CustomResourceExt;

fn repo_file(path: &str) -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    (path, text)
}

#[test]
fn the_committed_crds_are_what_crdgen_prints() {
    let generated = crd_yaml().expect("the CRD serialises");
    for file in [
        "manifests/crd.yaml",
        "charts/coolpy7/crds/coolpy7clusters.yaml",
    ] {
        let (path, committed) = repo_file(file);
        assert!(
            committed == generated,
            "{} differs from what crdgen prints; regenerate it with\n  cargo run -p \
             coolpy7-operator --bin crdgen > {file}",
            path.display()
        );
    }
}

#[test]
fn the_crd_has_names_subresources_columns_defaults_and_the_budget_rule() {
    let crd = serde_json::to_value(Coolpy7Cluster::crd()).expect("JSON");
    let spec = &crd["spec"];
    assert_eq!(spec["group"], "coolpy7.io");
    assert_eq!(spec["scope"], "Namespaced");
    assert_eq!(spec["names"]["kind"], "Coolpy7Cluster");
    assert_eq!(spec["names"]["shortNames"][0], "c7");
    let version = &spec["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["served"], true);
    assert_eq!(version["storage"], true);
    assert!(version["subresources"]["status"].is_object());
    let scale = &version["subresources"]["scale"];
    assert_eq!(scale["specReplicasPath"], ".spec.replicas");
    assert_eq!(scale["statusReplicasPath"], ".status.replicas");
    assert_eq!(scale["labelSelectorPath"], ".status.selector");
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(columns, ["Ready", "Replicas", "Phase", "Age"]);

    let props = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(props["replicas"]["default"], 3);
    assert_eq!(props["replicas"]["minimum"].as_f64(), Some(1.0));
    assert_eq!(props["ports"]["properties"]["gossip"]["default"], 7946);
    assert_eq!(
        props["ports"]["properties"]["sync"]["maximum"].as_f64(),
        Some(65535.0)
    );
    assert_eq!(
        props["service"]["properties"]["type"]["default"],
        "LoadBalancer"
    );
    let types: Vec<&str> = props["service"]["properties"]["type"]["enum"]
        .as_array()
        .expect("enum")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(types, ["ClusterIP", "NodePort", "LoadBalancer"]);
    assert_eq!(props["podAntiAffinity"]["default"], "soft");
    let rules = &props["podDisruptionBudget"]["x-kubernetes-validations"];
    assert_eq!(
        rules[0]["rule"],
        "!(has(self.minAvailable) && has(self.maxUnavailable))"
    );
}

#[test]
fn the_mqtt5_limits_are_optional_and_bounded_as_the_broker_flags_are() {
    let crd = serde_json::to_value(Coolpy7Cluster::crd()).expect("JSON");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mqtt = &spec["properties"]["mqtt"];
    assert_eq!(mqtt["type"], "object");
    assert!(
        mqtt.get("default").is_none(),
        "no default: an absent block leaves the broker's defaults"
    );
    let required = spec["required"].as_array().cloned().unwrap_or_default();
    assert!(!required.iter().any(|r| r == "mqtt"), "mqtt is optional");
    assert!(mqtt.get("required").is_none(), "every limit is optional");
    // (field, minimum, maximum): the ranges of -mka, -mri and -mta.
    for (field, min, max) in [
        ("serverKeepAlive", 0.0, 65535.0),
        ("receiveMaximum", 1.0, 65535.0),
        ("topicAliasMaximum", 0.0, 65535.0),
    ] {
        let property = &mqtt["properties"][field];
        assert_eq!(property["type"], "integer", "{field}");
        assert_eq!(property["minimum"].as_f64(), Some(min), "{field} minimum");
        assert_eq!(property["maximum"].as_f64(), Some(max), "{field} maximum");
        assert!(property.get("default").is_none(), "{field} has no default");
        assert!(
            property["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{field} is described"
        );
    }
    // The features -wsa and -sia: true or false, left out = the broker's default (true).
    for field in ["wildcardSubscriptions", "subscriptionIdentifiers"] {
        let property = &mqtt["properties"][field];
        assert_eq!(property["type"], "boolean", "{field}");
        assert!(property.get("default").is_none(), "{field} has no default");
        assert!(
            property["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{field} is described"
        );
    }
    let names: Vec<&String> = mqtt["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .collect();
    assert_eq!(
        names.len(),
        5,
        "only the three MQTT 5 limits and two features are typed: {names:?}"
    );
}
