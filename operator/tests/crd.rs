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

fn spec_schema(crd: &serde_json::Value) -> &serde_json::Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
}

#[test]
fn listeners_default_to_plain_mqtt_with_the_others_off_on_their_usual_ports() {
    let crd = serde_json::to_value(Coolpy7Cluster::crd()).expect("JSON");
    let props = &spec_schema(&crd)["properties"];
    let listeners = &props["listeners"];
    assert_eq!(
        listeners["default"],
        serde_json::json!({
            "mqtt": {"enabled": true},
            "tls": {"enabled": false, "port": 8883},
            "websocket": {"enabled": false, "port": 8083},
            "websocketTls": {"enabled": false, "port": 8084},
            "coap": {"enabled": false, "port": 5683},
            "websocketPath": "/mqtt"
        })
    );
    // Each listener's own schema fills in its own port when only `enabled` is given.
    for (listener, port) in [
        ("tls", 8883),
        ("websocket", 8083),
        ("websocketTls", 8084),
        ("coap", 5683),
    ] {
        let fields = &listeners["properties"][listener]["properties"];
        assert_eq!(fields["enabled"]["default"], false, "{listener}");
        assert_eq!(fields["port"]["default"], port, "{listener}");
        assert_eq!(fields["port"]["minimum"].as_f64(), Some(1.0), "{listener}");
        assert_eq!(
            fields["port"]["maximum"].as_f64(),
            Some(65535.0),
            "{listener}"
        );
    }
    assert_eq!(
        listeners["properties"]["mqtt"]["properties"]["enabled"]["default"],
        true
    );
    assert!(
        listeners["properties"]["mqtt"]["properties"]
            .get("port")
            .is_none(),
        "the plain port stays ports.mqtt"
    );
    assert_eq!(props["proxyProtocol"]["default"], false);

    let tls = &props["tls"];
    assert!(tls.get("default").is_none(), "no TLS unless asked for");
    let fields = &tls["properties"];
    assert_eq!(fields["clientCAKey"]["default"], "ca.crt");
    assert!(fields["secretName"].get("default").is_none());
    assert!(
        fields["verifyClients"].get("default").is_none(),
        "left out, the broker decides from whether there is a CA"
    );
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .expect("a list")
            .iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    assert_eq!(
        strings(&fields["verifyClients"]["enum"]),
        ["none", "optional", "required"]
    );
    assert_eq!(fields["usernameFromCertificate"]["default"], "off");
    assert_eq!(
        strings(&fields["usernameFromCertificate"]["enum"]),
        ["off", "cn", "san"]
    );
}

/// A Coolpy7Cluster with `spec`, as a client sends it (the validator applies the defaults).
fn object(spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"apiVersion": "coolpy7.io/v1alpha1", "kind": "Coolpy7Cluster",
                       "metadata": {"name": "mq", "namespace": "iot"}, "spec": spec})
}

/// The CEL rules' failure messages for `spec`, after the schema's defaults, as the API server
/// evaluates them.
fn cel_failures(spec: serde_json::Value) -> Vec<String> {
    let crd = serde_json::to_value(Coolpy7Cluster::crd()).expect("JSON");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    match kube::core::cel::Validator::new().validate(schema, &object(spec), None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| e.to_string())
            .collect(),
    }
}

#[test]
fn every_cel_rule_compiles() {
    let crd = serde_json::to_value(Coolpy7Cluster::crd()).expect("JSON");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let compiled = kube::core::cel::compile_schema(schema);
    let errors: Vec<String> = compiled
        .compilation_errors()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(errors, Vec::<String>::new());
    let rules = serde_json::to_string(schema)
        .expect("JSON")
        .matches("\"rule\":")
        .count();
    assert_eq!(
        rules, 15,
        "the budget's, the TLS ones, the listeners' (CoAP's among them), auth's, \
         forwarding.recordLimitBytes' and drain.serverReference's"
    );
}

#[test]
fn the_cel_rules_accept_specs_that_work() {
    for spec in [
        serde_json::json!({}),
        serde_json::json!({"listeners": {"websocket": {"enabled": true}}}),
        serde_json::json!({"listeners": {"tls": {"enabled": true}}, "tls": {"secretName": "c"}}),
        serde_json::json!({
            "ports": {"mqtt": 1884},
            "listeners": {"mqtt": {"enabled": true}, "tls": {"enabled": true},
                          "websocket": {"enabled": true}, "websocketTls": {"enabled": true}},
            "tls": {"secretName": "c", "clientCASecretName": "ca", "verifyClients": "optional",
                    "usernameFromCertificate": "san"},
            "proxyProtocol": true
        }),
        // TLS only, on the plain port's number.
        serde_json::json!({"listeners": {"mqtt": {"enabled": false},
                                         "websocketTls": {"enabled": true, "port": 1883}},
                           "tls": {"secretName": "c", "clientCASecretName": "ca",
                                   "usernameFromCertificate": "cn"}}),
        // A disabled listener's port is not checked.
        serde_json::json!({"listeners": {"tls": {"port": 1883}}}),
        // TLS settings are allowed (and unused) without a TLS listener.
        serde_json::json!({"tls": {"secretName": "c", "verifyClients": "none"}}),
        // Each auth mode with what it needs; what a mode does not use is allowed (unused).
        serde_json::json!({"auth": {}}),
        serde_json::json!({"auth": {"mode": "none", "aclConfigMap": {"name": "a", "key": "acl"},
                                    "aclDefault": "allow"}}),
        serde_json::json!({"auth": {"mode": "jwt", "jwtSecret": {"name": "j", "key": "hmac"}}}),
        serde_json::json!({"auth": {"mode": "jwt", "jwtPublicKey": {"name": "j", "key": "pem"},
                                    "passwordSecret": {"name": "p", "key": "p"}}}),
        serde_json::json!({"auth": {"mode": "password",
                                    "passwordSecret": {"name": "p", "key": "passwords"}}}),
        serde_json::json!({"auth": {"mode": "http", "httpHook": {
            "url": "http://auth.iot.svc/mqtt", "tokenSecret": {"name": "h", "key": "token"},
            "timeoutSeconds": 2, "cacheSeconds": 0}}}),
        // CoAP is UDP: TCP 1883 is another port; a disabled listener's port is not checked.
        serde_json::json!({"listeners": {"coap": {"enabled": true, "port": 1883}}}),
        serde_json::json!({"listeners": {"coap": {"port": 7946}}}),
        serde_json::json!({"limits": {"pingIntervalSeconds": 5, "publishIntervalMillis": 0,
                                      "banSeconds": 600, "connectionRate": 50,
                                      "publishRate": {"messages": 10, "bytes": 10000000000_i64}}}),
        serde_json::json!({"forwarding": {}}),
        serde_json::json!({"forwarding": {"bufferBytes": 65536, "recordLimitBytes": 0}}),
        serde_json::json!({"forwarding": {"recordLimitBytes": 64}}),
        serde_json::json!({"forwarding": {"sharedSubscriptions": "cluster"}}),
        serde_json::json!({"drain": {}}),
        serde_json::json!({"drain": {"graceSeconds": 0, "disconnectRate": 0,
                                     "serverReference": "mqtt.example.org:1883"}}),
        // 65535 bytes, in one-byte and in three-byte characters.
        serde_json::json!({"drain": {"serverReference": "a".repeat(65535)}}),
        serde_json::json!({"drain": {"serverReference": "€".repeat(21845)}}),
        serde_json::json!({"minReadySeconds": 0}),
    ] {
        assert_eq!(cel_failures(spec.clone()), Vec::<String>::new(), "{spec}");
    }
}

#[test]
fn the_cel_rules_refuse_specs_the_broker_would_refuse() {
    let tls = serde_json::json!({"secretName": "c"});
    for (spec, expected) in [
        (
            serde_json::json!({"listeners": {"tls": {"enabled": true}}}),
            vec!["listeners.tls and listeners.websocketTls need tls.secretName"],
        ),
        (
            serde_json::json!({"listeners": {"websocketTls": {"enabled": true}},
                               "tls": {"clientCASecretName": "ca"}}),
            vec!["listeners.tls and listeners.websocketTls need tls.secretName"],
        ),
        (
            serde_json::json!({"listeners": {"mqtt": {"enabled": false}}}),
            vec!["enable at least one listener"],
        ),
        (
            serde_json::json!({"listeners": {"tls": {"enabled": true}},
                               "tls": {"secretName": "c", "verifyClients": "required"}}),
            vec!["verifyClients optional or required needs clientCASecretName"],
        ),
        (
            serde_json::json!({"tls": {"secretName": "c", "verifyClients": "optional",
                                       "usernameFromCertificate": "cn"}}),
            vec![
                "verifyClients optional or required needs clientCASecretName",
                "usernameFromCertificate needs client certificates",
            ],
        ),
        (
            serde_json::json!({"tls": {"secretName": "c", "clientCASecretName": "ca",
                                       "verifyClients": "none", "usernameFromCertificate": "san"}}),
            vec!["usernameFromCertificate needs client certificates"],
        ),
        // Two enabled listeners on one port: both are named.
        (
            serde_json::json!({"listeners": {"websocket": {"enabled": true, "port": 1883}}}),
            vec![
                "ports.mqtt is already in use",
                "listeners.websocket.port is already in use",
            ],
        ),
        (
            serde_json::json!({"listeners": {"tls": {"enabled": true},
                                             "websocketTls": {"enabled": true, "port": 8883}},
                               "tls": tls}),
            vec![
                "listeners.tls.port is already in use",
                "listeners.websocketTls.port is already in use",
            ],
        ),
        // A listener on the cluster's own ports.
        (
            serde_json::json!({"listeners": {"websocket": {"enabled": true, "port": 7947}}}),
            vec!["listeners.websocket.port is already in use"],
        ),
        (
            serde_json::json!({"ports": {"http": 8883},
                               "listeners": {"tls": {"enabled": true}}, "tls": tls}),
            vec!["listeners.tls.port is already in use"],
        ),
        // CoAP on the other UDP ports.
        (
            serde_json::json!({"listeners": {"coap": {"enabled": true, "port": 7946}}}),
            vec!["listeners.coap.port is already in use"],
        ),
        (
            serde_json::json!({"ports": {"sync": 5683},
                               "listeners": {"coap": {"enabled": true}}}),
            vec!["listeners.coap.port is already in use"],
        ),
        // What each auth mode needs.
        (
            serde_json::json!({"auth": {"mode": "jwt"}}),
            vec!["mode jwt needs one of jwtSecret"],
        ),
        (
            serde_json::json!({"auth": {"mode": "jwt", "jwtSecret": {"name": "j", "key": "k"},
                                        "jwtPublicKey": {"name": "j", "key": "p"}}}),
            vec!["not both"],
        ),
        (
            serde_json::json!({"auth": {"mode": "password",
                                        "jwtSecret": {"name": "j", "key": "k"}}}),
            vec!["mode password needs passwordSecret"],
        ),
        (
            serde_json::json!({"auth": {"mode": "http"}}),
            vec!["mode http needs httpHook.url"],
        ),
        // The broker refuses a -csl of 1 to 63.
        (
            serde_json::json!({"forwarding": {"recordLimitBytes": 1}}),
            vec!["forwarding.recordLimitBytes is 0 (no limit) or at least 64 bytes"],
        ),
        (
            serde_json::json!({"forwarding": {"recordLimitBytes": 63}}),
            vec!["forwarding.recordLimitBytes is 0 (no limit) or at least 64 bytes"],
        ),
        // The broker refuses a -dsr of more than 65535 bytes; maxLength counts characters.
        (
            serde_json::json!({"drain": {"serverReference": "€".repeat(21846)}}),
            vec!["drain.serverReference is at most 65535 bytes of UTF-8"],
        ),
        (
            serde_json::json!({"drain": {"serverReference": "a".repeat(65536)}}),
            vec!["drain.serverReference is at most 65535 bytes of UTF-8"],
        ),
    ] {
        let failures = cel_failures(spec.clone());
        assert_eq!(failures.len(), expected.len(), "{spec}: {failures:?}");
        for (failure, expected) in failures.iter().zip(&expected) {
            assert!(failure.contains(expected), "{spec}: {failures:?}");
        }
    }
}

#[test]
fn auth_and_limits_are_optional_and_bounded_and_coap_is_off_by_default() {
    let crd = serde_json::to_value(Coolpy7Cluster::crd()).expect("JSON");
    let spec = spec_schema(&crd);
    let props = &spec["properties"];
    let required = spec["required"].as_array().cloned().unwrap_or_default();
    for block in ["auth", "limits"] {
        assert_eq!(props[block]["type"], "object", "{block}");
        assert!(
            props[block].get("default").is_none(),
            "{block}: absent, the broker's defaults (no auth, no limits)"
        );
        assert!(!required.iter().any(|r| r == block), "{block} is optional");
        assert!(
            props[block]["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{block} is described"
        );
    }
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .expect("a list")
            .iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let auth = &props["auth"]["properties"];
    assert_eq!(auth["mode"]["default"], "none");
    assert_eq!(
        strings(&auth["mode"]["enum"]),
        ["none", "jwt", "http", "password"]
    );
    assert_eq!(strings(&auth["aclDefault"]["enum"]), ["allow", "deny"]);
    assert!(
        auth["aclDefault"].get("default").is_none(),
        "left out, the broker decides (deny)"
    );
    // Every reference names an object and a key, keys as Kubernetes allows them (no paths).
    for reference in [
        &auth["jwtSecret"],
        &auth["jwtPublicKey"],
        &auth["passwordSecret"],
        &auth["aclConfigMap"],
        &auth["httpHook"]["properties"]["tokenSecret"],
    ] {
        assert_eq!(
            strings(&reference["required"]),
            ["key", "name"],
            "{reference}"
        );
        assert_eq!(
            reference["properties"]["key"]["pattern"],
            "^[-._a-zA-Z0-9]+$"
        );
        assert_eq!(
            reference["properties"]["name"]["minLength"].as_f64(),
            Some(1.0)
        );
    }
    let hook = &auth["httpHook"];
    assert_eq!(strings(&hook["required"]), ["url"]);
    assert_eq!(
        hook["properties"]["url"]["pattern"],
        "^http://[^\\s/@]+(/\\S*)?$"
    );
    // The ranges of -hat and -hac.
    assert_eq!(
        hook["properties"]["timeoutSeconds"]["minimum"].as_f64(),
        Some(1.0)
    );
    assert_eq!(
        hook["properties"]["timeoutSeconds"]["maximum"].as_f64(),
        Some(60.0)
    );
    assert_eq!(
        hook["properties"]["cacheSeconds"]["maximum"].as_f64(),
        Some(86_400.0)
    );
    assert_eq!(
        hook["properties"]["cacheSeconds"]["minimum"].as_f64(),
        Some(0.0)
    );
    let limits = &props["limits"]["properties"];
    // (field, maximum): the ranges of -pl, -psl, -dt; -cr is an int32 like the others.
    for (field, max) in [
        ("pingIntervalSeconds", Some(86_400.0)),
        ("publishIntervalMillis", Some(86_400_000.0)),
        ("banSeconds", Some(31_536_000.0)),
        ("connectionRate", None),
    ] {
        assert_eq!(limits[field]["type"], "integer", "{field}");
        assert_eq!(limits[field]["format"], "int32", "{field}");
        assert_eq!(limits[field]["minimum"].as_f64(), Some(0.0), "{field}");
        assert_eq!(limits[field]["maximum"].as_f64(), max, "{field}");
        assert!(limits[field].get("default").is_none(), "{field}");
    }
    let rate = &limits["publishRate"]["properties"];
    assert_eq!(rate["messages"]["minimum"].as_f64(), Some(0.0));
    assert_eq!(
        rate["bytes"]["format"], "int64",
        "more than 2 GB/s is a value"
    );
    assert_eq!(rate["bytes"]["minimum"].as_f64(), Some(0.0));

    let coap = &props["listeners"]["properties"]["coap"];
    assert_eq!(coap["properties"]["enabled"]["default"], false);
    assert_eq!(coap["properties"]["port"]["default"], 5683);
    assert!(
        coap["description"]
            .as_str()
            .is_some_and(|d| d.contains("1.26")),
        "the field says a mixed-protocol LoadBalancer needs Kubernetes 1.26"
    );
}

#[test]
fn the_forwarding_sizes_are_optional_and_bounded_as_the_broker_flags_are() {
    let crd = serde_json::to_value(Coolpy7Cluster::crd()).expect("JSON");
    let spec = spec_schema(&crd);
    let cluster = &spec["properties"]["forwarding"];
    assert_eq!(cluster["type"], "object");
    assert!(
        cluster.get("default").is_none(),
        "no default: an absent block leaves the broker's defaults"
    );
    let required = spec["required"].as_array().cloned().unwrap_or_default();
    assert!(
        !required.iter().any(|r| r == "forwarding"),
        "forwarding is optional"
    );
    assert!(cluster.get("required").is_none(), "every size is optional");
    // (field, minimum): -csb's, and -csl's below its CEL rule (0, or at least 64).
    for (field, min) in [("bufferBytes", 65536.0), ("recordLimitBytes", 0.0)] {
        let property = &cluster["properties"][field];
        assert_eq!(property["type"], "integer", "{field}");
        assert_eq!(property["format"], "int64", "{field}: gigabytes are values");
        assert_eq!(property["minimum"].as_f64(), Some(min), "{field} minimum");
        assert!(property.get("maximum").is_none(), "{field} maximum");
        assert!(property.get("default").is_none(), "{field} has no default");
        assert!(
            property["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{field} is described"
        );
    }
    assert_eq!(
        cluster["properties"]["recordLimitBytes"]["x-kubernetes-validations"][0]["rule"],
        "self == 0 || self >= 64"
    );
    let names: Vec<&String> = cluster["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .collect();
    assert_eq!(
        names,
        ["bufferBytes", "recordLimitBytes", "sharedSubscriptions"]
    );
    // -ssp: one of the broker's two policies, lowercase as the flag takes them; optional.
    let policy = &cluster["properties"]["sharedSubscriptions"];
    assert_eq!(policy["type"], "string");
    assert_eq!(
        policy["enum"],
        serde_json::json!(["local", "cluster", null]),
        "the broker's values, or none"
    );
    assert!(policy.get("default").is_none(), "the broker's default");
    assert!(policy["description"]
        .as_str()
        .is_some_and(|d| d.contains("-ssp")));
}

#[test]
fn the_drain_settings_and_min_ready_seconds_are_optional_and_bounded_as_the_flags_are() {
    let crd = serde_json::to_value(Coolpy7Cluster::crd()).expect("JSON");
    let spec = spec_schema(&crd);
    let required = spec["required"].as_array().cloned().unwrap_or_default();
    let drain = &spec["properties"]["drain"];
    assert_eq!(drain["type"], "object");
    assert!(
        drain.get("default").is_none(),
        "no default: an absent block leaves the broker's defaults"
    );
    assert!(!required.iter().any(|r| r == "drain"), "drain is optional");
    assert!(drain.get("required").is_none(), "every setting is optional");
    assert!(drain["description"]
        .as_str()
        .is_some_and(|d| d.contains("-dg") && d.contains("-dr") && d.contains("-dsr")));
    let names: Vec<&String> = drain["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .collect();
    assert_eq!(
        names,
        ["disconnectRate", "graceSeconds", "serverReference"],
        "sorted as the CRD writes them"
    );
    // (field, minimum, maximum): -dg's range, and -dr's (a u32).
    for (field, min, max, flag) in [
        ("graceSeconds", 0.0, 86_400.0, "-dg"),
        ("disconnectRate", 0.0, 4_294_967_295.0, "-dr"),
    ] {
        let property = &drain["properties"][field];
        assert_eq!(property["type"], "integer", "{field}");
        assert_eq!(property["format"], "int64", "{field}");
        assert_eq!(property["minimum"].as_f64(), Some(min), "{field} minimum");
        assert_eq!(property["maximum"].as_f64(), Some(max), "{field} maximum");
        assert!(property.get("default").is_none(), "{field} has no default");
        assert!(
            property["description"]
                .as_str()
                .is_some_and(|d| d.contains(flag)),
            "{field} names {flag}"
        );
    }
    // -dsr: a non-empty MQTT UTF-8 string (at most 65535 bytes, no NUL).
    let reference = &drain["properties"]["serverReference"];
    assert_eq!(reference["type"], "string");
    assert_eq!(reference["minLength"].as_f64(), Some(1.0));
    assert_eq!(reference["maxLength"].as_f64(), Some(65535.0));
    assert_eq!(reference["pattern"], "^[^\\x00]*$");
    assert_eq!(
        reference["x-kubernetes-validations"][0]["rule"],
        "size(bytes(self)) <= 65535"
    );
    assert!(reference.get("default").is_none());
    assert!(reference["description"]
        .as_str()
        .is_some_and(|d| d.contains("-dsr") && d.contains("0x9C")));

    let min_ready = &spec["properties"]["minReadySeconds"];
    assert_eq!(min_ready["type"], "integer");
    assert_eq!(
        min_ready["format"], "int32",
        "the StatefulSet's field's type"
    );
    assert_eq!(min_ready["minimum"].as_f64(), Some(0.0));
    assert!(min_ready.get("maximum").is_none());
    assert!(
        min_ready.get("default").is_none(),
        "left out, the operator's 10"
    );
    assert!(!required.iter().any(|r| r == "minReadySeconds"));
    assert!(min_ready["description"]
        .as_str()
        .is_some_and(|d| d.contains("Left out: 10")));
}

#[test]
fn persistence_is_off_by_default_and_bounded_as_the_flags_and_claims_are() {
    let crd = serde_json::to_value(Coolpy7Cluster::crd()).expect("JSON");
    let spec = spec_schema(&crd);
    let persistence = &spec["properties"]["persistence"];
    assert_eq!(persistence["type"], "object");
    assert_eq!(
        persistence["default"],
        serde_json::json!({"enabled": false, "size": "1Gi", "fsyncIntervalMs": 0}),
        "filled in by the API server: in memory only"
    );
    assert!(
        persistence.get("required").is_none(),
        "every field has a default"
    );
    let description = persistence["description"].as_str().unwrap_or_default();
    for part in [
        "-dd",
        "-dfs",
        "data-<name>-<ordinal>",
        "/var/lib/coolpy7",
        "PersistenceImmutable",
    ] {
        assert!(description.contains(part), "{part}: {description}");
    }
    let names: Vec<&String> = persistence["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .collect();
    assert_eq!(
        names,
        ["enabled", "fsyncIntervalMs", "size", "storageClassName"],
        "sorted as the CRD writes them"
    );
    let fields = &persistence["properties"];
    assert_eq!(fields["enabled"]["type"], "boolean");
    assert_eq!(fields["enabled"]["default"], false);
    let fsync = &fields["fsyncIntervalMs"];
    assert_eq!(fsync["type"], "integer");
    assert_eq!(fsync["default"], 0);
    assert_eq!(fsync["minimum"].as_f64(), Some(0.0));
    assert_eq!(fsync["maximum"].as_f64(), Some(10000.0), "-dfs's bound");
    assert!(fsync["description"]
        .as_str()
        .is_some_and(|d| d.contains("-dfs") && d.contains("power loss")));
    let size = &fields["size"];
    assert_eq!(size["type"], "string");
    assert_eq!(size["default"], "1Gi");
    assert_eq!(size["pattern"], coolpy7_operator::crd::SIZE_PATTERN);
    assert_eq!(size["maxLength"].as_f64(), Some(64.0));
    let class = &fields["storageClassName"];
    assert_eq!(class["type"], "string");
    assert!(
        class.get("default").is_none(),
        "left out: the default class"
    );
    assert_eq!(
        class["pattern"],
        coolpy7_operator::crd::STORAGE_CLASS_PATTERN
    );
    assert_eq!(class["maxLength"].as_f64(), Some(253.0));
    // The defaults the API server fills in are the operator's own.
    let spec: coolpy7_operator::crd::Coolpy7ClusterSpec =
        serde_json::from_value(serde_json::json!({})).expect("an empty spec");
    assert_eq!(
        serde_json::to_value(&spec.persistence).expect("JSON"),
        persistence["default"]
    );
}
