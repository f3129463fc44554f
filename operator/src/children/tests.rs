use k8s_openapi::api::core::v1::{Affinity, NodeAffinity};
use serde_json::json;

use super::*;
use crate::crd::{Coolpy7ClusterSpec, ServiceType};

const DOMAIN: &str = "cluster.local";

fn cluster_with(spec: serde_json::Value) -> Coolpy7Cluster {
    let spec: Coolpy7ClusterSpec = serde_json::from_value(spec).expect("a valid spec");
    let mut cluster = Coolpy7Cluster::new("mq", spec);
    cluster.metadata.namespace = Some("iot".into());
    cluster.metadata.uid = Some("0b5e-uid".into());
    cluster
}

fn cluster() -> Coolpy7Cluster {
    cluster_with(json!({}))
}

fn container(set: &StatefulSet) -> &Container {
    &set.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

fn env<'a>(container: &'a Container, name: &str) -> &'a EnvVar {
    container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("env {name}"))
}

#[test]
fn defaults_fill_an_empty_spec() {
    let spec = cluster().spec;
    assert_eq!(spec.replicas, 3);
    assert_eq!(spec.ports.mqtt, 1883);
    assert_eq!(spec.ports.gossip, 7946);
    assert_eq!(spec.ports.sync, 7947);
    assert_eq!(spec.ports.http, 8081);
    assert_eq!(spec.service.type_, ServiceType::LoadBalancer);
    assert!(spec.pod_disruption_budget.enabled);
    assert_eq!(spec.log_level, "info");
}

#[test]
fn every_child_is_owned_by_the_cluster_and_labelled() {
    let cluster = cluster();
    let metas = [
        csk_secret(&cluster, &[0; CSK_BYTES]).metadata,
        headless_service(&cluster).metadata,
        client_service(&cluster).metadata,
        stateful_set(&cluster, DOMAIN).metadata,
        pod_disruption_budget(&cluster).unwrap().metadata,
    ];
    for meta in metas {
        let name = meta.name.clone().unwrap();
        assert_eq!(meta.namespace.as_deref(), Some("iot"), "{name}");
        let owners = meta.owner_references.unwrap();
        assert_eq!(owners.len(), 1, "{name}");
        let owner = &owners[0];
        assert_eq!(owner.api_version, "coolpy7.io/v1alpha1");
        assert_eq!(owner.kind, "Coolpy7Cluster");
        assert_eq!(owner.name, "mq");
        assert_eq!(owner.uid, "0b5e-uid");
        assert_eq!(owner.controller, Some(true));
        let labels = meta.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "coolpy7", "{name}");
        assert_eq!(labels["app.kubernetes.io/instance"], "mq", "{name}");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "coolpy7-operator");
        assert_eq!(
            MANAGED_BY_SELECTOR, "app.kubernetes.io/managed-by=coolpy7-operator",
            "the watches select what the children carry"
        );
    }
}

#[test]
fn selectors_match_the_pod_labels() {
    let cluster =
        cluster_with(json!({"podLabels": {"team": "iot", "app.kubernetes.io/name": "x"}}));
    let set = stateful_set(&cluster, DOMAIN);
    let spec = set.spec.as_ref().unwrap();
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let selector = spec.selector.match_labels.clone().unwrap();
    assert_eq!(selector, selector_labels(&cluster));
    for (k, v) in &selector {
        assert_eq!(pod_labels.get(k), Some(v), "pod label {k}");
    }
    assert_eq!(pod_labels["team"], "iot", "the user's pod labels are added");
    for service in [headless_service(&cluster), client_service(&cluster)] {
        assert_eq!(service.spec.unwrap().selector.unwrap(), selector);
    }
    let pdb = pod_disruption_budget(&cluster).unwrap();
    assert_eq!(
        pdb.spec.unwrap().selector.unwrap().match_labels.unwrap(),
        selector
    );
    assert_eq!(
        selector_string(&cluster),
        "app.kubernetes.io/instance=mq,app.kubernetes.io/name=coolpy7"
    );
}

#[test]
fn seeds_are_the_first_three_pods_whatever_the_replica_count() {
    let expected = vec![
        "mq-0.mq-headless.iot.svc.cluster.local:7946".to_string(),
        "mq-1.mq-headless.iot.svc.cluster.local:7946".to_string(),
        "mq-2.mq-headless.iot.svc.cluster.local:7946".to_string(),
    ];
    for replicas in [1, 3, 7] {
        let cluster = cluster_with(json!({ "replicas": replicas }));
        assert_eq!(seeds(&cluster, DOMAIN), expected, "{replicas} replicas");
    }
    let other = cluster_with(json!({"ports": {"gossip": 17946}}));
    assert_eq!(
        seeds(&other, "example.org")[2],
        "mq-2.mq-headless.iot.svc.example.org:17946"
    );
}

#[test]
fn scaling_changes_only_the_replica_count() {
    let three = stateful_set(&cluster_with(json!({"replicas": 3})), DOMAIN);
    let five = stateful_set(&cluster_with(json!({"replicas": 5})), DOMAIN);
    let one = stateful_set(&cluster_with(json!({"replicas": 1})), DOMAIN);
    assert_eq!(five.spec.as_ref().unwrap().replicas, Some(5));
    for other in [&five, &one] {
        let mut other = other.clone();
        other.spec.as_mut().unwrap().replicas = Some(3);
        assert_eq!(
            other, three,
            "nothing else differs, the pod template least of all"
        );
    }
    // An image change does change the template: the StatefulSet rolls.
    let new_image = stateful_set(&cluster_with(json!({"image": {"tag": "9.9.9"}})), DOMAIN);
    assert_ne!(
        new_image.spec.as_ref().unwrap().template,
        three.spec.as_ref().unwrap().template
    );
    assert_eq!(
        container(&new_image).image.as_deref(),
        Some("ghcr.io/coolpy7/coolpy7:9.9.9")
    );
}

#[test]
fn the_broker_gets_its_identity_seeds_and_key_from_the_pod_and_the_secret() {
    let cluster = cluster_with(json!({"args": ["-mq=5000"], "logLevel": "debug"}));
    let set = stateful_set(&cluster, DOMAIN);
    let spec = set.spec.as_ref().unwrap();
    assert_eq!(spec.service_name.as_deref(), Some("mq-headless"));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let container = container(&set);
    let args = container.args.clone().unwrap();
    assert_eq!(args[0], "-nid=$(POD_NAME)");
    assert_eq!(args[1], "-cad=$(POD_IP)");
    assert_eq!(
        args[2],
        format!("-mbs={}", seeds(&cluster, DOMAIN).join(","))
    );
    assert!(args.contains(&"-l=:1883".to_string()));
    assert!(args.contains(&"-hl=:8081".to_string()));
    assert!(args.contains(&"-crp=7946".to_string()));
    assert!(args.contains(&"-csp=7947".to_string()));
    assert!(args.contains(&"--log-level=debug".to_string()));
    assert_eq!(
        args.last().map(String::as_str),
        Some("-mq=5000"),
        "user flags last"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("-csk")),
        "the key is never an argument"
    );

    let pod_name = env(container, "POD_NAME").value_from.clone().unwrap();
    assert_eq!(pod_name.field_ref.unwrap().field_path, "metadata.name");
    let pod_ip = env(container, "POD_IP").value_from.clone().unwrap();
    assert_eq!(pod_ip.field_ref.unwrap().field_path, "status.podIP");
    let csk = env(container, "COOLPY7_CSK").value_from.clone().unwrap();
    let secret = csk.secret_key_ref.unwrap();
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("mq-csk", "csk")
    );
    assert!(env(container, "COOLPY7_CSK").value.is_none());
}

/// The broker flags in `args` that start with one of `prefixes`, in order.
fn flags_starting_with<'a>(args: &'a [String], prefixes: &[&str]) -> Vec<&'a str> {
    args.iter()
        .map(String::as_str)
        .filter(|arg| prefixes.iter().any(|prefix| arg.starts_with(prefix)))
        .collect()
}

const MQTT5_FLAGS: [&str; 5] = ["-mka=", "-mri=", "-mta=", "-wsa=", "-sia="];

#[test]
fn mqtt5_limits_become_flags_only_when_set() {
    for spec in [json!({}), json!({"mqtt": {}}), json!({"mqtt": null})] {
        let args = broker_args(&cluster_with(spec.clone()), DOMAIN);
        assert_eq!(
            flags_starting_with(&args, &MQTT5_FLAGS),
            Vec::<&str>::new(),
            "{spec}: the broker's defaults apply"
        );
    }

    let all = cluster_with(json!({"mqtt": {
        "serverKeepAlive": 300, "receiveMaximum": 100, "topicAliasMaximum": 0,
        "wildcardSubscriptions": false, "subscriptionIdentifiers": false
    }}));
    let args = broker_args(&all, DOMAIN);
    assert_eq!(
        flags_starting_with(&args, &MQTT5_FLAGS),
        ["-mka=300", "-mri=100", "-mta=0", "-wsa=false", "-sia=false"],
        "0 is a value (no aliases), not an absent field"
    );

    // A feature set to true is passed too (the user said so), one left out is not.
    let on = cluster_with(json!({"mqtt": {"wildcardSubscriptions": true}}));
    let args = broker_args(&on, DOMAIN);
    assert_eq!(flags_starting_with(&args, &MQTT5_FLAGS), ["-wsa=true"]);
    let off = cluster_with(json!({"mqtt": {"subscriptionIdentifiers": false}}));
    let args = broker_args(&off, DOMAIN);
    assert_eq!(flags_starting_with(&args, &MQTT5_FLAGS), ["-sia=false"]);

    let one = cluster_with(json!({"mqtt": {"receiveMaximum": 65535}}));
    let args = broker_args(&one, DOMAIN);
    assert_eq!(flags_starting_with(&args, &MQTT5_FLAGS), ["-mri=65535"]);

    // The flags reach the container of the StatefulSet as they are.
    let set = stateful_set(&all, DOMAIN);
    let container_args = container(&set).args.clone().unwrap();
    assert_eq!(
        flags_starting_with(&container_args, &MQTT5_FLAGS),
        ["-mka=300", "-mri=100", "-mta=0", "-wsa=false", "-sia=false"]
    );
}

#[test]
fn spec_args_come_after_the_mqtt5_limits_so_they_can_override_them() {
    let cluster = cluster_with(json!({
        "mqtt": {"serverKeepAlive": 60, "topicAliasMaximum": 10},
        "args": ["-mta=20", "-mq=5000"]
    }));
    let args = broker_args(&cluster, DOMAIN);
    let position = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} in {args:?}"))
    };
    let log_level = position("--log-level=info");
    let keep_alive = position("-mka=60");
    let spec_alias = position("-mta=10");
    let user_alias = position("-mta=20");
    assert!(
        log_level < keep_alive && keep_alive < spec_alias,
        "the spec's flags in their order: {args:?}"
    );
    assert!(
        spec_alias < user_alias,
        "the user's -mta comes last and wins: {args:?}"
    );
    assert_eq!(
        &args[args.len() - 2..],
        ["-mta=20", "-mq=5000"],
        "spec.args end the command line, as given"
    );
}

#[test]
fn an_existing_secret_is_used_when_the_spec_names_one() {
    let cluster = cluster_with(json!({"csk": {"secretName": "shared-key", "key": "k"}}));
    assert_eq!(csk_secret_ref(&cluster), ("shared-key".into(), "k".into()));
    let set = stateful_set(&cluster, DOMAIN);
    let secret = env(container(&set), "COOLPY7_CSK")
        .value_from
        .clone()
        .unwrap()
        .secret_key_ref
        .unwrap();
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("shared-key", "k")
    );
}

#[test]
fn the_generated_secret_holds_the_key_as_text_under_csk() {
    // Bytes a broker could not take from an environment variable: NUL, invalid UTF-8.
    let mut random = [0u8; CSK_BYTES];
    random[1] = 0xff;
    random[2] = 0xc3;
    random[31] = 0x7f;
    let secret = csk_secret(&cluster(), &random);
    assert_eq!(secret.metadata.name.as_deref(), Some("mq-csk"));
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let value = secret.data.unwrap()["csk"].0.clone();
    let text = String::from_utf8(value).expect("the key is text");
    assert_eq!(text.len(), 2 * CSK_BYTES);
    assert!(text.bytes().all(|b| b.is_ascii_hexdigit()), "{text}");
    assert!(text.starts_with("00ffc3"), "{text}");
    assert!(text.ends_with("7f"), "{text}");
}

#[test]
fn ports_and_protocols() {
    let cluster = cluster();
    let headless = headless_service(&cluster).spec.unwrap();
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
    assert_eq!(headless.publish_not_ready_addresses, Some(true));
    let ports: Vec<(String, i32, String)> = headless
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.port, p.protocol.unwrap()))
        .collect();
    assert_eq!(
        ports,
        vec![
            ("gossip".into(), 7946, "UDP".into()),
            ("sync".into(), 7947, "UDP".into()),
            ("mqtt".into(), 1883, "TCP".into()),
        ]
    );
    let set = stateful_set(&cluster, DOMAIN);
    let container_ports: Vec<(String, i32, String)> = container(&set)
        .ports
        .clone()
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.container_port, p.protocol.unwrap()))
        .collect();
    assert_eq!(
        container_ports,
        vec![
            ("mqtt".into(), 1883, "TCP".into()),
            ("gossip".into(), 7946, "UDP".into()),
            ("sync".into(), 7947, "UDP".into()),
            ("http".into(), 8081, "TCP".into()),
        ]
    );
    let c = container(&set);
    let readiness = c.readiness_probe.clone().unwrap().http_get.unwrap();
    assert_eq!(readiness.path.as_deref(), Some("/readyz"));
    assert_eq!(readiness.port, IntOrString::String("http".into()));
    let liveness = c.liveness_probe.clone().unwrap().http_get.unwrap();
    assert_eq!(liveness.path.as_deref(), Some("/healthz"));
}

#[test]
fn the_client_service_follows_the_spec() {
    let default = client_service(&cluster());
    assert_eq!(default.metadata.name.as_deref(), Some("mq"));
    let spec = default.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let ports = spec.ports.unwrap();
    assert_eq!(
        (ports[0].port, ports[0].protocol.as_deref()),
        (1883, Some("TCP"))
    );

    let custom = client_service(&cluster_with(json!({"service": {
        "type": "LoadBalancer",
        "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
        "labels": {"exposed": "yes"},
        "loadBalancerClass": "service.k8s.aws/nlb",
        "loadBalancerSourceRanges": ["10.0.0.0/8"],
        "externalTrafficPolicy": "Local"
    }})));
    let annotations = custom.metadata.annotations.unwrap();
    assert_eq!(
        annotations["service.beta.kubernetes.io/aws-load-balancer-type"],
        "nlb"
    );
    assert_eq!(custom.metadata.labels.unwrap()["exposed"], "yes");
    let spec = custom.spec.unwrap();
    assert_eq!(
        spec.load_balancer_class.as_deref(),
        Some("service.k8s.aws/nlb")
    );
    assert_eq!(
        spec.load_balancer_source_ranges,
        Some(vec!["10.0.0.0/8".into()])
    );
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));

    // Load-balancer settings are dropped where the API server would refuse them.
    let node_port = client_service(&cluster_with(json!({"service": {
        "type": "NodePort", "loadBalancerSourceRanges": ["10.0.0.0/8"], "externalTrafficPolicy": "Local"
    }})))
    .spec
    .unwrap();
    assert_eq!(node_port.type_.as_deref(), Some("NodePort"));
    assert_eq!(node_port.load_balancer_source_ranges, None);
    assert_eq!(node_port.external_traffic_policy.as_deref(), Some("Local"));
    let cluster_ip = client_service(&cluster_with(json!({"service": {
        "type": "ClusterIP", "externalTrafficPolicy": "Local"
    }})))
    .spec
    .unwrap();
    assert_eq!(cluster_ip.external_traffic_policy, None);
}

#[test]
fn pods_spread_softly_by_default_hard_on_request_or_as_the_user_says() {
    let pod_spec = |cluster: &Coolpy7Cluster| {
        stateful_set(cluster, DOMAIN)
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
    };
    let soft = pod_spec(&cluster())
        .affinity
        .unwrap()
        .pod_anti_affinity
        .unwrap();
    let preferred = soft
        .preferred_during_scheduling_ignored_during_execution
        .unwrap();
    assert_eq!(preferred[0].weight, 100);
    assert_eq!(
        preferred[0].pod_affinity_term.topology_key,
        HOSTNAME_TOPOLOGY
    );
    assert!(soft
        .required_during_scheduling_ignored_during_execution
        .is_none());

    let hard = pod_spec(&cluster_with(json!({"podAntiAffinity": "hard"})))
        .affinity
        .unwrap()
        .pod_anti_affinity
        .unwrap();
    let required = hard
        .required_during_scheduling_ignored_during_execution
        .unwrap();
    assert_eq!(
        required[0]
            .label_selector
            .clone()
            .unwrap()
            .match_labels
            .unwrap(),
        selector_labels(&cluster())
    );

    let custom = Affinity {
        node_affinity: Some(NodeAffinity::default()),
        ..Affinity::default()
    };
    let mut with_affinity = cluster();
    with_affinity.spec.affinity = Some(custom.clone());
    assert_eq!(pod_spec(&with_affinity).affinity, Some(custom));
}

#[test]
fn scheduling_fields_pass_through() {
    let spec = stateful_set(
        &cluster_with(json!({
            "nodeSelector": {"pool": "mqtt"},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "priorityClassName": "high",
            "imagePullSecrets": [{"name": "registry"}],
            "podAnnotations": {"prometheus.io/scrape": "true"},
            "resources": {"limits": {"memory": "512Mi"}},
            "env": [{"name": "COOLPY7_MQ", "value": "5000"}]
        })),
        DOMAIN,
    )
    .spec
    .unwrap();
    let template = spec.template;
    assert_eq!(
        template.metadata.unwrap().annotations.unwrap()["prometheus.io/scrape"],
        "true"
    );
    let pod = template.spec.unwrap();
    assert_eq!(pod.node_selector.unwrap()["pool"], "mqtt");
    assert_eq!(
        pod.tolerations.unwrap()[0].key.as_deref(),
        Some("dedicated")
    );
    assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
    assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "registry");
    assert_eq!(
        pod.termination_grace_period_seconds,
        Some(50),
        "the broker's default drain grace, 30 s, and the margin"
    );
    let container = &pod.containers[0];
    assert!(container.resources.as_ref().unwrap().limits.is_some());
    assert_eq!(env(container, "COOLPY7_MQ").value.as_deref(), Some("5000"));
}

#[test]
fn the_disruption_budget_allows_one_pod_down_unless_told_otherwise() {
    let default = pod_disruption_budget(&cluster()).unwrap().spec.unwrap();
    assert_eq!(default.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(default.min_available, None);
    let min = pod_disruption_budget(&cluster_with(
        json!({"podDisruptionBudget": {"minAvailable": "60%"}}),
    ))
    .unwrap()
    .spec
    .unwrap();
    assert_eq!(min.min_available, Some(IntOrString::String("60%".into())));
    assert_eq!(min.max_unavailable, None);
    assert!(pod_disruption_budget(&cluster_with(
        json!({"podDisruptionBudget": {"enabled": false}})
    ))
    .is_none());
}

#[test]
fn a_new_key_changes_the_pod_template() {
    let cluster = cluster_with(json!({"podAnnotations": {"a": "b"}}));
    let fingerprint = key_fingerprint(b"00ff");
    assert_eq!(fingerprint.len(), 16);
    assert_ne!(fingerprint, key_fingerprint(b"00fe"));
    let set = with_key_fingerprint(stateful_set(&cluster, DOMAIN), &fingerprint);
    let annotations = set
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .clone()
        .unwrap()
        .annotations
        .unwrap();
    assert_eq!(annotations[KEY_ANNOTATION], fingerprint);
    assert_eq!(annotations["a"], "b", "the user's annotations stay");
    let other = with_key_fingerprint(stateful_set(&cluster, DOMAIN), &key_fingerprint(b"00fe"));
    assert_ne!(set.spec.unwrap().template, other.spec.unwrap().template);
}

const LISTENER_FLAGS: [&str; 11] = [
    "-l=", "-tl=", "-wl=", "-wsl=", "-wsp=", "-tc=", "-tk=", "-tca=", "-tv=", "-tcn=", "-pp=",
];

fn pod_spec(set: &StatefulSet) -> &PodSpec {
    set.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn port_names_and_numbers(ports: &[ServicePort]) -> Vec<(String, i32)> {
    ports
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.port))
        .collect()
}

#[test]
fn without_listener_or_tls_settings_nothing_changes() {
    let spec = cluster().spec;
    assert!(spec.listeners.mqtt.enabled);
    assert!(!spec.listeners.tls.enabled);
    assert_eq!(spec.listeners.tls.port, 8883);
    assert!(!spec.listeners.websocket.enabled);
    assert_eq!(spec.listeners.websocket.port, 8083);
    assert!(!spec.listeners.websocket_tls.enabled);
    assert_eq!(spec.listeners.websocket_tls.port, 8084);
    assert_eq!(spec.listeners.websocket_path, "/mqtt");
    assert_eq!(spec.tls, None);
    assert!(!spec.proxy_protocol);

    // The same objects as before these fields existed: only -l, no volumes, no fsGroup.
    for spec in [
        json!({}),
        json!({"listeners": {}, "proxyProtocol": false}),
        // TLS settings without a TLS listener are left unused (the broker refuses them).
        json!({"tls": {"secretName": "cert", "clientCASecretName": "ca",
                       "usernameFromCertificate": "cn"}}),
    ] {
        let cluster = cluster_with(spec.clone());
        let args = broker_args(&cluster, DOMAIN);
        assert_eq!(
            flags_starting_with(&args, &LISTENER_FLAGS),
            ["-l=:1883"],
            "{spec}"
        );
        let set = stateful_set(&cluster, DOMAIN);
        let pod = pod_spec(&set);
        assert_eq!(pod.volumes, None, "{spec}");
        assert_eq!(container(&set).volume_mounts, None, "{spec}");
        assert_eq!(
            pod.security_context.as_ref().unwrap().fs_group,
            None,
            "{spec}"
        );
        assert_eq!(
            port_names_and_numbers(&client_service(&cluster).spec.unwrap().ports.unwrap()),
            [("mqtt".to_string(), 1883)],
            "{spec}"
        );
        assert_eq!(mounted_objects(&cluster), Vec::new(), "{spec}");
    }
    assert_eq!(
        stateful_set(
            &cluster_with(json!({"tls": {"secretName": "cert"}})),
            DOMAIN
        ),
        stateful_set(&cluster(), DOMAIN)
    );
}

#[test]
fn every_listener_gets_its_flag_container_port_and_service_port() {
    let cluster = cluster_with(json!({
        "ports": {"mqtt": 1884},
        "listeners": {"tls": {"enabled": true}, "websocket": {"enabled": true, "port": 9001},
                      "websocketTls": {"enabled": true}, "websocketPath": "/ws"},
        "tls": {"secretName": "mq-cert"}
    }));
    let args = broker_args(&cluster, DOMAIN);
    assert_eq!(
        flags_starting_with(&args, &LISTENER_FLAGS),
        [
            "-l=:1884",
            "-tl=:8883",
            "-wl=:9001",
            "-wsl=:8084",
            "-wsp=/ws",
            "-tc=/etc/coolpy7/tls/tls.crt",
            "-tk=/etc/coolpy7/tls/tls.key",
        ]
    );
    // Between the seeds and the health endpoint, as -l was.
    assert_eq!(args[3], "-l=:1884");
    assert!(
        args.iter()
            .position(|a| a == "-tk=/etc/coolpy7/tls/tls.key")
            < args.iter().position(|a| a.starts_with("-hl="))
    );

    let set = stateful_set(&cluster, DOMAIN);
    let container_ports: Vec<(String, i32, String)> = container(&set)
        .ports
        .clone()
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.container_port, p.protocol.unwrap()))
        .collect();
    assert_eq!(
        container_ports,
        vec![
            ("mqtt".into(), 1884, "TCP".into()),
            ("mqtts".into(), 8883, "TCP".into()),
            ("ws".into(), 9001, "TCP".into()),
            ("wss".into(), 8084, "TCP".into()),
            ("gossip".into(), 7946, "UDP".into()),
            ("sync".into(), 7947, "UDP".into()),
            ("http".into(), 8081, "TCP".into()),
        ]
    );
    let service_ports = client_service(&cluster).spec.unwrap().ports.unwrap();
    assert_eq!(
        port_names_and_numbers(&service_ports),
        [
            ("mqtt".to_string(), 1884),
            ("mqtts".to_string(), 8883),
            ("ws".to_string(), 9001),
            ("wss".to_string(), 8084),
        ]
    );
    for port in &service_ports {
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
        assert_eq!(
            port.target_port,
            Some(IntOrString::String(port.name.clone().unwrap())),
            "the Service points at the container port of the same name"
        );
    }
    // The headless Service only carries what the pods need to find each other, as before.
    assert_eq!(
        port_names_and_numbers(&headless_service(&cluster).spec.unwrap().ports.unwrap()),
        [
            ("gossip".to_string(), 7946),
            ("sync".to_string(), 7947),
            ("mqtt".to_string(), 1884),
        ]
    );
}

#[test]
fn the_plain_listener_can_be_turned_off() {
    let cluster = cluster_with(json!({
        "listeners": {"mqtt": {"enabled": false}, "tls": {"enabled": true, "port": 8884}},
        "tls": {"secretName": "mq-cert"}
    }));
    let args = broker_args(&cluster, DOMAIN);
    assert_eq!(
        flags_starting_with(&args, &["-l=", "-tl="]),
        ["-l=nil", "-tl=:8884"]
    );
    let set = stateful_set(&cluster, DOMAIN);
    let names: Vec<String> = container(&set)
        .ports
        .clone()
        .unwrap()
        .into_iter()
        .map(|p| p.name.unwrap())
        .collect();
    assert_eq!(names, ["mqtts", "gossip", "sync", "http"]);
    assert_eq!(
        port_names_and_numbers(&client_service(&cluster).spec.unwrap().ports.unwrap()),
        [("mqtts".to_string(), 8884)]
    );
    assert_eq!(
        port_names_and_numbers(&headless_service(&cluster).spec.unwrap().ports.unwrap()),
        [("gossip".to_string(), 7946), ("sync".to_string(), 7947)],
        "no mqtt port left pointing at nothing"
    );
}

#[test]
fn websocket_alone_needs_no_certificate() {
    let cluster = cluster_with(json!({"listeners": {"websocket": {"enabled": true}}}));
    let args = broker_args(&cluster, DOMAIN);
    assert_eq!(
        flags_starting_with(&args, &LISTENER_FLAGS),
        ["-l=:1883", "-wl=:8083", "-wsp=/mqtt"]
    );
    assert_eq!(mounted_objects(&cluster), Vec::new());
    assert_eq!(pod_spec(&stateful_set(&cluster, DOMAIN)).volumes, None);
}

#[test]
fn certificate_secrets_are_mounted_as_whole_directories() {
    let cluster = cluster_with(json!({
        "listeners": {"websocketTls": {"enabled": true}},
        "tls": {"secretName": "mq-cert", "clientCASecretName": "iot-ca", "clientCAKey": "bundle.pem"}
    }));
    let set = stateful_set(&cluster, DOMAIN);
    let pod = pod_spec(&set);
    let volumes = pod.volumes.clone().unwrap();
    let secrets: Vec<(String, String, Option<i32>, Option<bool>)> = volumes
        .iter()
        .map(|v| {
            let secret = v.secret.clone().expect("a secret volume");
            assert_eq!(
                secret.items, None,
                "every key, so the directory follows the Secret"
            );
            (
                v.name.clone(),
                secret.secret_name.unwrap(),
                secret.default_mode,
                secret.optional,
            )
        })
        .collect();
    assert_eq!(
        secrets,
        [
            ("tls".into(), "mq-cert".into(), Some(0o440), Some(false)),
            (
                "client-ca".into(),
                "iot-ca".into(),
                Some(0o440),
                Some(false)
            ),
        ]
    );
    let mounts = container(&set).volume_mounts.clone().unwrap();
    let mounts: Vec<(String, String, Option<bool>, Option<String>)> = mounts
        .into_iter()
        .map(|m| (m.name, m.mount_path, m.read_only, m.sub_path))
        .collect();
    assert_eq!(
        mounts,
        [
            ("tls".into(), TLS_DIR.into(), Some(true), None),
            ("client-ca".into(), CLIENT_CA_DIR.into(), Some(true), None),
        ],
        "no subPath: it would never see a renewed certificate"
    );
    // Group-readable files, and the broker in that group.
    assert_eq!(
        pod.security_context.as_ref().unwrap().fs_group,
        Some(SECRET_FILES_GROUP)
    );
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
    let args = broker_args(&cluster, DOMAIN);
    assert_eq!(
        flags_starting_with(&args, &["-tc=", "-tk=", "-tca=", "-tv=", "-tcn="]),
        [
            "-tc=/etc/coolpy7/tls/tls.crt",
            "-tk=/etc/coolpy7/tls/tls.key",
            "-tca=/etc/coolpy7/client-ca/bundle.pem",
        ],
        "verification left to the broker's default: required with a CA"
    );
    // What the reconciler checks before it applies the StatefulSet.
    assert_eq!(
        mounted_objects(&cluster),
        [
            MountedObject {
                kind: MountKind::Secret,
                name: "mq-cert".into(),
                keys: vec!["tls.crt".into(), "tls.key".into()],
                field: "tls.secretName",
                volume: "tls",
                dir: TLS_DIR,
                missing_reason: TLS_SECRET_MISSING,
            },
            MountedObject {
                kind: MountKind::Secret,
                name: "iot-ca".into(),
                keys: vec!["bundle.pem".into()],
                field: "tls.clientCASecretName",
                volume: "client-ca",
                dir: CLIENT_CA_DIR,
                missing_reason: TLS_SECRET_MISSING,
            },
        ]
    );
}

#[test]
fn client_certificate_settings_become_flags_when_given() {
    let with_tls = |tls: serde_json::Value| {
        let cluster = cluster_with(json!({"listeners": {"tls": {"enabled": true}}, "tls": tls}));
        let args = broker_args(&cluster, DOMAIN);
        flags_starting_with(&args, &["-tca=", "-tv=", "-tcn="])
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    // The default key is cert-manager's ca.crt, and the same Secret may hold both.
    assert_eq!(
        with_tls(json!({"secretName": "c", "clientCASecretName": "c"})),
        ["-tca=/etc/coolpy7/client-ca/ca.crt"]
    );
    assert_eq!(
        with_tls(json!({"secretName": "c", "clientCASecretName": "ca",
                        "verifyClients": "optional", "usernameFromCertificate": "san"})),
        [
            "-tca=/etc/coolpy7/client-ca/ca.crt",
            "-tv=optional",
            "-tcn=san"
        ]
    );
    assert_eq!(
        with_tls(json!({"secretName": "c", "clientCASecretName": "ca",
                        "verifyClients": "required", "usernameFromCertificate": "cn"})),
        [
            "-tca=/etc/coolpy7/client-ca/ca.crt",
            "-tv=required",
            "-tcn=cn"
        ]
    );
    // Said explicitly, passed explicitly (the broker's default is the same).
    assert_eq!(
        with_tls(json!({"secretName": "c", "verifyClients": "none"})),
        ["-tv=none"]
    );
    assert_eq!(
        with_tls(json!({"secretName": "c", "usernameFromCertificate": "off"})),
        Vec::<String>::new(),
        "off is the broker's default"
    );
}

#[test]
fn the_proxy_protocol_is_asked_of_every_enabled_listener() {
    let pp = |spec: serde_json::Value| {
        let args = broker_args(&cluster_with(spec), DOMAIN);
        flags_starting_with(&args, &["-pp="])
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(pp(json!({"proxyProtocol": true})), ["-pp=tcp"]);
    assert_eq!(
        pp(json!({"proxyProtocol": true, "tls": {"secretName": "c"},
                  "listeners": {"tls": {"enabled": true}, "websocket": {"enabled": true},
                                "websocketTls": {"enabled": true}}})),
        ["-pp=tcp,tls,ws,wss"]
    );
    assert_eq!(
        pp(json!({"proxyProtocol": true, "tls": {"secretName": "c"},
                  "listeners": {"mqtt": {"enabled": false}, "websocketTls": {"enabled": true}}})),
        ["-pp=wss"],
        "only the listeners that are open"
    );
    assert_eq!(
        pp(json!({"proxyProtocol": false, "listeners": {"websocket": {"enabled": true}}})),
        Vec::<String>::new()
    );
}

#[test]
fn turning_tls_on_changes_the_pod_template() {
    let plain = stateful_set(&cluster(), DOMAIN);
    let spec = json!({"listeners": {"tls": {"enabled": true}}, "tls": {"secretName": "cert"}});
    let tls = stateful_set(&cluster_with(spec), DOMAIN);
    assert_ne!(
        plain.spec.as_ref().unwrap().template,
        tls.spec.as_ref().unwrap().template,
        "a new listener rolls the pods"
    );
}

/// The flags of access control, abuse limits and CoAP.
const AUTH_FLAGS: [&str; 11] = [
    "-as=", "-jsk", "-jpk=", "-pwf=", "-acl=", "-acld=", "-ha=", "-htf=", "-hat=", "-hac=", "-ari=",
];
const LIMIT_FLAGS: [&str; 6] = ["-pl=", "-psl=", "-dt=", "-cr=", "-prm=", "-prb="];

fn volumes_and_mounts(cluster: &Coolpy7Cluster) -> (Vec<Volume>, Vec<VolumeMount>) {
    let set = stateful_set(cluster, DOMAIN);
    (
        pod_spec(&set).volumes.clone().unwrap_or_default(),
        container(&set).volume_mounts.clone().unwrap_or_default(),
    )
}

#[test]
fn without_auth_limits_or_coap_nothing_changes() {
    let spec = cluster().spec;
    assert_eq!(spec.auth, None);
    assert_eq!(spec.limits, None);
    assert!(!spec.listeners.coap.enabled);
    assert_eq!(spec.listeners.coap.port, 5683);
    let plain = stateful_set(&cluster(), DOMAIN);
    for spec in [
        json!({"auth": {}}),
        json!({"auth": {"mode": "none"}}),
        // What mode none does not use is left unused (and unchecked), as TLS settings are
        // without a TLS listener.
        json!({"auth": {"mode": "none", "jwtSecret": {"name": "jwt", "key": "hmac"},
                        "passwordSecret": {"name": "pw", "key": "passwords"},
                        "httpHook": {"url": "http://auth.iot.svc/check",
                                     "tokenSecret": {"name": "hook", "key": "token"}}}}),
        json!({"limits": {}}),
        json!({"limits": {"pingIntervalSeconds": 0, "publishIntervalMillis": 0, "banSeconds": 0,
                          "connectionRate": 0, "publishRate": {"messages": 0, "bytes": 0}}}),
        json!({"listeners": {"coap": {"enabled": false, "port": 5684}}}),
    ] {
        let cluster = cluster_with(spec.clone());
        let args = broker_args(&cluster, DOMAIN);
        assert_eq!(
            flags_starting_with(&args, &AUTH_FLAGS),
            Vec::<&str>::new(),
            "{spec}"
        );
        assert_eq!(
            flags_starting_with(&args, &LIMIT_FLAGS),
            Vec::<&str>::new(),
            "{spec}"
        );
        assert_eq!(
            flags_starting_with(&args, &["-cl="]),
            Vec::<&str>::new(),
            "{spec}"
        );
        assert_eq!(mounted_objects(&cluster), Vec::new(), "{spec}");
        assert_eq!(
            port_names_and_numbers(&client_service(&cluster).spec.unwrap().ports.unwrap()),
            [("mqtt".to_string(), 1883)],
            "{spec}"
        );
        assert_eq!(
            stateful_set(&cluster, DOMAIN),
            plain,
            "{spec}: no rolling restart"
        );
    }
}

#[test]
fn each_auth_mode_becomes_its_flags_with_the_files_where_they_are_mounted() {
    let auth_flags = |auth: serde_json::Value| {
        let args = broker_args(&cluster_with(json!({ "auth": auth })), DOMAIN);
        flags_starting_with(&args, &AUTH_FLAGS)
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    // The HMAC secret as a file (-jskf), never as a value (-jsk), so an edit needs no restart.
    assert_eq!(
        auth_flags(json!({"mode": "jwt", "jwtSecret": {"name": "jwt", "key": "hmac"}})),
        ["-as=1", "-jskf=/etc/coolpy7/auth/jwt/hmac"]
    );
    assert_eq!(
        auth_flags(json!({"mode": "jwt", "jwtPublicKey": {"name": "jwt", "key": "es256.pem"}})),
        ["-as=1", "-jpk=/etc/coolpy7/auth/jwt/es256.pem"]
    );
    assert_eq!(
        auth_flags(json!({"mode": "http", "httpHook": {"url": "http://auth.iot.svc:8443/mqtt"}})),
        ["-as=2", "-ha=http://auth.iot.svc:8443/mqtt"],
        "the service's timeout and cache stay the broker's"
    );
    assert_eq!(
        auth_flags(json!({"mode": "http", "httpHook": {
            "url": "http://auth.iot.svc/mqtt", "tokenSecret": {"name": "hook", "key": "token"},
            "timeoutSeconds": 5, "cacheSeconds": 0}})),
        [
            "-as=2",
            "-ha=http://auth.iot.svc/mqtt",
            "-htf=/etc/coolpy7/auth/hook/token",
            "-hat=5",
            "-hac=0",
        ],
        "0 is a value (no cache), not an absent field"
    );
    assert_eq!(
        auth_flags(json!({"mode": "password", "passwordSecret": {"name": "pw", "key": "passwd"}})),
        ["-as=3", "-pwf=/etc/coolpy7/auth/passwords/passwd"]
    );
    // Rules apply in any mode, the default decision only when given.
    assert_eq!(
        auth_flags(json!({"aclConfigMap": {"name": "rules", "key": "acl.conf"}})),
        ["-acl=/etc/coolpy7/auth/acl/acl.conf"]
    );
    assert_eq!(
        auth_flags(
            json!({"mode": "password", "passwordSecret": {"name": "pw", "key": "p"},
                          "aclConfigMap": {"name": "rules", "key": "acl"},
                          "aclDefault": "allow"})
        ),
        [
            "-as=3",
            "-pwf=/etc/coolpy7/auth/passwords/p",
            "-acl=/etc/coolpy7/auth/acl/acl",
            "-acld=allow"
        ]
    );
    assert_eq!(auth_flags(json!({"aclDefault": "deny"})), ["-acld=deny"]);
    // What another mode would use is not passed.
    assert_eq!(
        auth_flags(
            json!({"mode": "password", "passwordSecret": {"name": "pw", "key": "p"},
                          "jwtSecret": {"name": "jwt", "key": "hmac"},
                          "httpHook": {"url": "http://a/"}})
        ),
        ["-as=3", "-pwf=/etc/coolpy7/auth/passwords/p"]
    );
}

#[test]
fn auth_files_are_mounted_as_whole_read_only_directories() {
    let cluster = cluster_with(json!({
        "listeners": {"tls": {"enabled": true}},
        "tls": {"secretName": "mq-cert"},
        "auth": {"mode": "jwt", "jwtPublicKey": {"name": "issuer", "key": "key.pem"},
                 "aclConfigMap": {"name": "rules", "key": "acl"}}
    }));
    let (volumes, mounts) = volumes_and_mounts(&cluster);
    // (volume, kind, object, file mode, optional)
    type Source = (String, String, String, Option<i32>, Option<bool>);
    let sources: Vec<Source> = volumes
        .iter()
        .map(|v| match (&v.secret, &v.config_map) {
            (Some(secret), None) => {
                assert_eq!(
                    secret.items, None,
                    "every key: the directory follows the Secret"
                );
                (
                    v.name.clone(),
                    "Secret".to_string(),
                    secret.secret_name.clone().unwrap(),
                    secret.default_mode,
                    secret.optional,
                )
            }
            (None, Some(map)) => {
                assert_eq!(
                    map.items, None,
                    "every key: the directory follows the ConfigMap"
                );
                (
                    v.name.clone(),
                    "ConfigMap".to_string(),
                    map.name.clone(),
                    map.default_mode,
                    map.optional,
                )
            }
            _ => panic!("volume {} is one Secret or one ConfigMap", v.name),
        })
        .collect();
    assert_eq!(
        sources,
        [
            (
                "tls".into(),
                "Secret".into(),
                "mq-cert".into(),
                Some(0o440),
                Some(false)
            ),
            (
                "auth-jwt".into(),
                "Secret".into(),
                "issuer".into(),
                Some(0o440),
                Some(false)
            ),
            (
                "auth-acl".into(),
                "ConfigMap".into(),
                "rules".into(),
                Some(0o440),
                Some(false)
            ),
        ]
    );
    let mounts: Vec<(String, String, Option<bool>, Option<String>)> = mounts
        .into_iter()
        .map(|m| (m.name, m.mount_path, m.read_only, m.sub_path))
        .collect();
    assert_eq!(
        mounts,
        [
            ("tls".into(), TLS_DIR.into(), Some(true), None),
            ("auth-jwt".into(), JWT_DIR.into(), Some(true), None),
            ("auth-acl".into(), ACL_DIR.into(), Some(true), None),
        ],
        "no subPath: it would never see an edited Secret or ConfigMap"
    );
    let set = stateful_set(&cluster, DOMAIN);
    assert_eq!(
        pod_spec(&set).security_context.as_ref().unwrap().fs_group,
        Some(SECRET_FILES_GROUP),
        "group-readable files, and the broker in that group"
    );
    // What the reconciler checks before it applies the StatefulSet, in the same order.
    let auth: Vec<MountedObject> = mounted_objects(&cluster).into_iter().skip(1).collect();
    assert_eq!(
        auth,
        [
            MountedObject {
                kind: MountKind::Secret,
                name: "issuer".into(),
                keys: vec!["key.pem".into()],
                field: "auth.jwtPublicKey",
                volume: "auth-jwt",
                dir: JWT_DIR,
                missing_reason: AUTH_SECRET_MISSING,
            },
            MountedObject {
                kind: MountKind::ConfigMap,
                name: "rules".into(),
                keys: vec!["acl".into()],
                field: "auth.aclConfigMap",
                volume: "auth-acl",
                dir: ACL_DIR,
                missing_reason: AUTH_CONFIG_MAP_MISSING,
            },
        ]
    );
}

#[test]
fn each_auth_mode_mounts_only_what_it_uses() {
    let mounted = |auth: serde_json::Value| {
        mounted_objects(&cluster_with(json!({ "auth": auth })))
            .into_iter()
            .map(|o| (o.field, o.name, o.volume, o.dir))
            .collect::<Vec<_>>()
    };
    let others = json!({"jwtPublicKey": {"name": "pub", "key": "k"},
                        "passwordSecret": {"name": "pw", "key": "p"},
                        "httpHook": {"url": "http://a/",
                                     "tokenSecret": {"name": "hook", "key": "t"}}});
    let with = |mode: &str, extra: serde_json::Value| {
        let mut auth = others.clone();
        auth["mode"] = json!(mode);
        for (k, v) in extra.as_object().unwrap() {
            auth[k] = v.clone();
        }
        auth
    };
    assert_eq!(
        mounted(with(
            "jwt",
            json!({"jwtPublicKey": null,
                                     "jwtSecret": {"name": "hmac", "key": "k"}})
        )),
        [("auth.jwtSecret", "hmac".into(), "auth-jwt", JWT_DIR)]
    );
    assert_eq!(
        mounted(with("jwt", json!({}))),
        [("auth.jwtPublicKey", "pub".into(), "auth-jwt", JWT_DIR)]
    );
    assert_eq!(
        mounted(with("password", json!({}))),
        [(
            "auth.passwordSecret",
            "pw".into(),
            "auth-passwords",
            PASSWORDS_DIR
        )]
    );
    assert_eq!(
        mounted(with("http", json!({}))),
        [(
            "auth.httpHook.tokenSecret",
            "hook".into(),
            "auth-hook",
            HOOK_DIR
        )]
    );
    assert_eq!(
        mounted(json!({"mode": "http", "httpHook": {"url": "http://a/"}})),
        [],
        "a service without a token mounts nothing"
    );
    assert_eq!(mounted(with("none", json!({}))), []);
    // The same Secret may serve two purposes: one volume each.
    let both = cluster_with(json!({"auth": {
        "mode": "password", "passwordSecret": {"name": "mq-auth", "key": "passwords"},
        "aclConfigMap": {"name": "mq-auth", "key": "acl"}}}));
    let (volumes, _) = volumes_and_mounts(&both);
    let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["auth-passwords", "auth-acl"]);
}

#[test]
fn abuse_limits_become_flags_only_when_above_zero() {
    let limit_flags = |limits: serde_json::Value| {
        let args = broker_args(&cluster_with(json!({ "limits": limits })), DOMAIN);
        flags_starting_with(&args, &LIMIT_FLAGS)
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        limit_flags(
            json!({"pingIntervalSeconds": 10, "publishIntervalMillis": 50,
                           "banSeconds": 300, "connectionRate": 200,
                           "publishRate": {"messages": 100, "bytes": 5_000_000_000_i64}})
        ),
        [
            "-pl=10",
            "-psl=50",
            "-dt=300",
            "-cr=200",
            "-prm=100",
            "-prb=5000000000"
        ]
    );
    assert_eq!(
        limit_flags(json!({"connectionRate": 0, "publishRate": {"bytes": 65536}})),
        ["-prb=65536"],
        "0 is off, the broker's default: left out"
    );
    assert_eq!(
        limit_flags(json!({"publishRate": {}})),
        Vec::<String>::new()
    );
}

#[test]
fn auth_and_limit_flags_come_after_the_listeners_and_before_spec_args() {
    let cluster = cluster_with(json!({
        "mqtt": {"serverKeepAlive": 60},
        "auth": {"mode": "password", "passwordSecret": {"name": "pw", "key": "p"},
                 "aclDefault": "deny"},
        "limits": {"banSeconds": 60},
        "listeners": {"coap": {"enabled": true}},
        "args": ["-acld=allow", "-dt=5", "-ari=30"]
    }));
    let args = broker_args(&cluster, DOMAIN);
    let position = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} in {args:?}"))
    };
    assert!(position("-cl=:5683") < position("-hl=:8081"), "{args:?}");
    assert!(position("-mka=60") < position("-as=3"), "{args:?}");
    assert!(position("-acld=deny") < position("-dt=60"), "{args:?}");
    assert!(
        position("-dt=60") < position("-acld=allow"),
        "the user's flags come last and win: {args:?}"
    );
    assert_eq!(&args[args.len() - 3..], ["-acld=allow", "-dt=5", "-ari=30"]);
}

const CLUSTER_FLAGS: [&str; 3] = ["-csb=", "-csl=", "-ssp="];

#[test]
fn forwarding_sizes_become_flags_only_when_set() {
    let plain = stateful_set(&cluster(), DOMAIN);
    for spec in [
        json!({}),
        json!({"forwarding": {}}),
        json!({"forwarding": null}),
    ] {
        let cluster = cluster_with(spec.clone());
        let args = broker_args(&cluster, DOMAIN);
        assert_eq!(
            flags_starting_with(&args, &CLUSTER_FLAGS),
            Vec::<&str>::new(),
            "{spec}: the broker's defaults apply"
        );
        assert_eq!(
            stateful_set(&cluster, DOMAIN),
            plain,
            "{spec}: no rolling restart"
        );
    }

    // Beyond 4 GiB: an i64 written out whole.
    let both = cluster_with(json!({"forwarding": {
        "bufferBytes": 8_589_934_592_i64, "recordLimitBytes": 65536
    }}));
    let args = broker_args(&both, DOMAIN);
    assert_eq!(
        flags_starting_with(&args, &CLUSTER_FLAGS),
        ["-csb=8589934592", "-csl=65536"]
    );
    let set = stateful_set(&both, DOMAIN);
    let container_args = container(&set).args.clone().unwrap();
    assert_eq!(
        flags_starting_with(&container_args, &CLUSTER_FLAGS),
        ["-csb=8589934592", "-csl=65536"],
        "the flags reach the container as they are"
    );

    let no_limit = cluster_with(json!({"forwarding": {"recordLimitBytes": 0}}));
    assert_eq!(
        flags_starting_with(&broker_args(&no_limit, DOMAIN), &CLUSTER_FLAGS),
        ["-csl=0"],
        "0 is a value (no limit), passed even though it is today's default"
    );
    let buffer = cluster_with(json!({"forwarding": {"bufferBytes": 65536}}));
    assert_eq!(
        flags_starting_with(&broker_args(&buffer, DOMAIN), &CLUSTER_FLAGS),
        ["-csb=65536"]
    );
}

#[test]
fn the_shared_subscription_policy_becomes_a_flag_only_when_set() {
    for (policy, flag) in [("local", "-ssp=local"), ("cluster", "-ssp=cluster")] {
        let cluster = cluster_with(json!({"forwarding": {"sharedSubscriptions": policy}}));
        assert_eq!(
            flags_starting_with(&broker_args(&cluster, DOMAIN), &CLUSTER_FLAGS),
            [flag]
        );
        let set = stateful_set(&cluster, DOMAIN);
        let container_args = container(&set).args.clone().unwrap();
        assert_eq!(
            flags_starting_with(&container_args, &CLUSTER_FLAGS),
            [flag],
            "the flag reaches the container"
        );
    }
    let all = cluster_with(json!({"forwarding": {
        "bufferBytes": 65536, "recordLimitBytes": 0, "sharedSubscriptions": "cluster"
    }}));
    assert_eq!(
        flags_starting_with(&broker_args(&all, DOMAIN), &CLUSTER_FLAGS),
        ["-csb=65536", "-csl=0", "-ssp=cluster"]
    );
    // Anything else is not a Coolpy7Cluster (the API server refuses it by the CRD's enum).
    let bad: Result<crate::crd::ForwardingSpec, _> =
        serde_json::from_value(json!({"sharedSubscriptions": "Local"}));
    assert!(bad.is_err());
}

#[test]
fn forwarding_flags_come_after_the_limits_and_before_spec_args() {
    let cluster = cluster_with(json!({
        "limits": {"banSeconds": 60},
        "forwarding": {"bufferBytes": 1_048_576, "recordLimitBytes": 4096},
        "args": ["-csl=8192", "-mq=5000"]
    }));
    let args = broker_args(&cluster, DOMAIN);
    let position = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} in {args:?}"))
    };
    assert!(position("-dt=60") < position("-csb=1048576"), "{args:?}");
    assert!(position("-csb=1048576") < position("-csl=4096"), "{args:?}");
    assert!(
        position("-csl=4096") < position("-csl=8192"),
        "the user's -csl comes last and wins: {args:?}"
    );
    assert_eq!(&args[args.len() - 2..], ["-csl=8192", "-mq=5000"]);
}

#[test]
fn the_coap_listener_gets_its_flag_and_a_udp_port_on_the_pods_and_the_client_service() {
    let coap = cluster_with(json!({
        "listeners": {"coap": {"enabled": true, "port": 5684}, "websocket": {"enabled": true}},
        "proxyProtocol": true
    }));
    let args = broker_args(&coap, DOMAIN);
    assert_eq!(
        flags_starting_with(&args, &["-l=", "-wl=", "-pp=", "-cl="]),
        ["-l=:1883", "-wl=:8083", "-pp=tcp,ws", "-cl=:5684"],
        "no PROXY header on CoAP"
    );
    let set = stateful_set(&coap, DOMAIN);
    let container_ports: Vec<(String, i32, String)> = container(&set)
        .ports
        .clone()
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.container_port, p.protocol.unwrap()))
        .collect();
    assert_eq!(
        container_ports,
        vec![
            ("mqtt".into(), 1883, "TCP".into()),
            ("ws".into(), 8083, "TCP".into()),
            ("coap".into(), 5684, "UDP".into()),
            ("gossip".into(), 7946, "UDP".into()),
            ("sync".into(), 7947, "UDP".into()),
            ("http".into(), 8081, "TCP".into()),
        ]
    );
    let service_ports: Vec<(String, i32, String, Option<IntOrString>)> = client_service(&coap)
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.port, p.protocol.unwrap(), p.target_port))
        .collect();
    assert_eq!(
        service_ports,
        vec![
            (
                "mqtt".into(),
                1883,
                "TCP".into(),
                Some(IntOrString::String("mqtt".into()))
            ),
            (
                "ws".into(),
                8083,
                "TCP".into(),
                Some(IntOrString::String("ws".into()))
            ),
            (
                "coap".into(),
                5684,
                "UDP".into(),
                Some(IntOrString::String("coap".into()))
            ),
        ],
        "one LoadBalancer, mixed protocols (Kubernetes 1.26+)"
    );
    assert_eq!(
        port_names_and_numbers(&headless_service(&coap).spec.unwrap().ports.unwrap()),
        [
            ("gossip".to_string(), 7946),
            ("sync".to_string(), 7947),
            ("mqtt".to_string(), 1883),
        ],
        "peers do not need it"
    );
    // The default port, and the pods roll when it is turned on.
    let default_port = cluster_with(json!({"listeners": {"coap": {"enabled": true}}}));
    assert_eq!(
        flags_starting_with(&broker_args(&default_port, DOMAIN), &["-cl="]),
        ["-cl=:5683"]
    );
    assert_ne!(
        stateful_set(&default_port, DOMAIN),
        stateful_set(&cluster(), DOMAIN)
    );
}

#[test]
fn turning_auth_on_changes_the_pod_template() {
    let plain = stateful_set(&cluster(), DOMAIN);
    let spec = json!({"auth": {"mode": "jwt", "jwtSecret": {"name": "jwt", "key": "hmac"}}});
    let jwt = stateful_set(&cluster_with(spec), DOMAIN);
    assert_ne!(
        plain.spec.as_ref().unwrap().template,
        jwt.spec.as_ref().unwrap().template,
        "a new mode rolls the pods"
    );
    let args = container(&jwt).args.clone().unwrap();
    assert!(args.contains(&"-as=1".to_string()), "{args:?}");
}

const DRAIN_FLAGS: [&str; 3] = ["-dg=", "-dr=", "-dsr="];

fn termination_grace(set: &StatefulSet) -> Option<i64> {
    pod_spec(set).termination_grace_period_seconds
}

fn min_ready_seconds(set: &StatefulSet) -> Option<i32> {
    set.spec.as_ref().unwrap().min_ready_seconds
}

#[test]
fn drain_settings_become_flags_only_when_set() {
    let plain = stateful_set(&cluster(), DOMAIN);
    for spec in [json!({}), json!({"drain": {}}), json!({"drain": null})] {
        let cluster = cluster_with(spec.clone());
        let args = broker_args(&cluster, DOMAIN);
        assert_eq!(
            flags_starting_with(&args, &DRAIN_FLAGS),
            Vec::<&str>::new(),
            "{spec}: the broker's defaults apply"
        );
        assert_eq!(
            stateful_set(&cluster, DOMAIN),
            plain,
            "{spec}: no rolling restart"
        );
    }

    for (drain, flags) in [
        (json!({"graceSeconds": 120}), vec!["-dg=120"]),
        (json!({"graceSeconds": 0}), vec!["-dg=0"]),
        (json!({"disconnectRate": 50}), vec!["-dr=50"]),
        (json!({"disconnectRate": 0}), vec!["-dr=0"]),
        (
            json!({"disconnectRate": 4_294_967_295_i64}),
            vec!["-dr=4294967295"],
        ),
        (
            json!({"serverReference": "mqtt.example.org:1883"}),
            vec!["-dsr=mqtt.example.org:1883"],
        ),
        (
            json!({"graceSeconds": 86400, "disconnectRate": 200,
                   "serverReference": "lb.example.org:8883"}),
            vec!["-dg=86400", "-dr=200", "-dsr=lb.example.org:8883"],
        ),
    ] {
        let cluster = cluster_with(json!({ "drain": drain }));
        let args = broker_args(&cluster, DOMAIN);
        assert_eq!(flags_starting_with(&args, &DRAIN_FLAGS), flags, "{drain}");
        let set = stateful_set(&cluster, DOMAIN);
        let container_args = container(&set).args.clone().unwrap();
        assert_eq!(
            flags_starting_with(&container_args, &DRAIN_FLAGS),
            flags,
            "{drain}: the flags reach the container as they are"
        );
    }

    // A reference with spaces stays one argument: no shell between the pod spec and the broker.
    let spaced = cluster_with(json!({"drain": {"serverReference": "use mq-2 please"}}));
    assert_eq!(
        flags_starting_with(&broker_args(&spaced, DOMAIN), &DRAIN_FLAGS),
        ["-dsr=use mq-2 please"]
    );
}

#[test]
fn drain_flags_come_after_the_forwarding_flags_and_before_spec_args() {
    let cluster = cluster_with(json!({
        "forwarding": {"bufferBytes": 1_048_576},
        "drain": {"graceSeconds": 60, "disconnectRate": 100},
        "args": ["-dr=500", "-mq=5000"]
    }));
    let args = broker_args(&cluster, DOMAIN);
    let position = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} in {args:?}"))
    };
    assert!(position("-csb=1048576") < position("-dg=60"), "{args:?}");
    assert!(position("-dg=60") < position("-dr=100"), "{args:?}");
    assert!(
        position("-dr=100") < position("-dr=500"),
        "the user's -dr comes last and wins: {args:?}"
    );
    assert_eq!(&args[args.len() - 2..], ["-dr=500", "-mq=5000"]);
}

#[test]
fn the_termination_grace_period_is_the_drain_grace_and_a_margin() {
    assert_eq!(TERMINATION_GRACE_MARGIN_SECONDS, 20);
    // Left out: the broker's default grace, 30 s.
    for spec in [
        json!({}),
        json!({"drain": {}}),
        json!({"drain": {"disconnectRate": 10}}),
    ] {
        let set = stateful_set(&cluster_with(spec.clone()), DOMAIN);
        assert_eq!(termination_grace(&set), Some(50), "{spec}");
    }
    for (grace, expected) in [(0, 20), (30, 50), (120, 140), (86400, 86420)] {
        let cluster = cluster_with(json!({"drain": {"graceSeconds": grace}}));
        assert_eq!(termination_grace_seconds(&cluster), expected, "{grace}");
        let set = stateful_set(&cluster, DOMAIN);
        assert_eq!(termination_grace(&set), Some(expected), "{grace}");
    }
    // A new grace is a new pod template: the pods roll, each draining with its old settings.
    let longer = stateful_set(
        &cluster_with(json!({"drain": {"graceSeconds": 120}})),
        DOMAIN,
    );
    assert_ne!(
        longer.spec.as_ref().unwrap().template,
        stateful_set(&cluster(), DOMAIN).spec.unwrap().template
    );
}

#[test]
fn updates_roll_one_pod_at_a_time_each_ready_for_min_ready_seconds() {
    let set = stateful_set(&cluster(), DOMAIN);
    let spec = set.spec.as_ref().unwrap();
    let strategy = spec.update_strategy.as_ref().expect("an update strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy.rolling_update, None,
        "the defaults: partition 0, one pod unavailable at a time"
    );
    assert_eq!(min_ready_seconds(&set), Some(10), "the operator's default");
    assert_eq!(DEFAULT_MIN_READY_SECONDS, 10);

    for seconds in [0, 45, 3600] {
        let set = stateful_set(&cluster_with(json!({ "minReadySeconds": seconds })), DOMAIN);
        assert_eq!(min_ready_seconds(&set), Some(seconds), "{seconds}");
        // The StatefulSet's own field: the pods are not restarted for it.
        assert_eq!(
            set.spec.as_ref().unwrap().template,
            stateful_set(&cluster(), DOMAIN).spec.unwrap().template,
            "{seconds}"
        );
    }
}

const PERSISTENCE_FLAGS: [&str; 2] = ["-dd=", "-dfs="];

#[test]
fn without_persistence_nothing_changes() {
    let plain = stateful_set(&cluster(), DOMAIN);
    // (A null is dropped by the API server, which then fills in the default.)
    for spec in [
        json!({"persistence": {}}),
        json!({"persistence": {"enabled": false, "size": "20Gi", "storageClassName": "fast",
                               "fsyncIntervalMs": 100}}),
    ] {
        let cluster = cluster_with(spec.clone());
        assert_eq!(data_claim_template(&cluster), None, "{spec}");
        let set = stateful_set(&cluster, DOMAIN);
        assert_eq!(
            set, plain,
            "{spec}: the StatefulSet it had, no rolling restart"
        );
        let args = container(&set).args.clone().unwrap();
        assert_eq!(
            flags_starting_with(&args, &PERSISTENCE_FLAGS),
            Vec::<&str>::new(),
            "{spec}: in memory only"
        );
    }
    let spec = plain.spec.as_ref().unwrap();
    assert_eq!(spec.volume_claim_templates, None);
    assert_eq!(spec.persistent_volume_claim_retention_policy, None);
    assert_eq!(container(&plain).volume_mounts, None);
    let security = pod_spec(&plain).security_context.clone().unwrap();
    assert_eq!(security.fs_group, None);
    assert_eq!(security.fs_group_change_policy, None);
}

#[test]
fn persistence_gives_each_pod_a_claim_mounted_as_the_data_directory() {
    let cluster = cluster_with(json!({"persistence": {"enabled": true, "size": "5Gi",
                                                      "storageClassName": "fast-ssd",
                                                      "fsyncIntervalMs": 10}}));
    let set = stateful_set(&cluster, DOMAIN);
    let spec = set.spec.as_ref().unwrap();
    assert_eq!(
        serde_json::to_value(&spec.volume_claim_templates).unwrap(),
        json!([{
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast-ssd",
                     "resources": {"requests": {"storage": "5Gi"}}}
        }])
    );
    assert_eq!(
        spec.persistent_volume_claim_retention_policy,
        Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
            when_deleted: Some("Retain".into()),
            when_scaled: Some("Delete".into()),
        }),
        "kept when the cluster is deleted, deleted with a pod a scale-down drained"
    );
    let broker = container(&set);
    assert_eq!(
        broker.volume_mounts,
        Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: "/var/lib/coolpy7".into(),
            ..VolumeMount::default()
        }]),
        "writable, the claim's volume (the StatefulSet adds it to the pods)"
    );
    assert_eq!(
        pod_spec(&set).volumes,
        None,
        "no pod volume: the template makes it"
    );
    let args = broker.args.clone().unwrap();
    assert_eq!(
        flags_starting_with(&args, &PERSISTENCE_FLAGS),
        ["-dd=/var/lib/coolpy7", "-dfs=10"]
    );
    // The broker runs as 65532, a non-root user: the volume is made writable for its group.
    let security = pod_spec(&set).security_context.clone().unwrap();
    assert_eq!(security.fs_group, Some(SECRET_FILES_GROUP));
    assert_eq!(
        security.fs_group_change_policy.as_deref(),
        Some("OnRootMismatch")
    );
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(
        broker
            .security_context
            .as_ref()
            .unwrap()
            .read_only_root_filesystem,
        Some(true),
        "only the data volume is written"
    );
}

#[test]
fn persistence_defaults_to_a_gibibyte_in_the_default_class_with_fsync_on_every_acknowledgement() {
    let cluster = cluster_with(json!({"persistence": {"enabled": true}}));
    let template = data_claim_template(&cluster).expect("a claim template");
    let claim = template.spec.unwrap();
    assert_eq!(
        claim.storage_class_name, None,
        "the cluster's default class"
    );
    assert_eq!(
        claim.resources.unwrap().requests.unwrap()["storage"],
        Quantity("1Gi".into())
    );
    let args = broker_args(&cluster, DOMAIN);
    assert_eq!(
        flags_starting_with(&args, &PERSISTENCE_FLAGS),
        ["-dd=/var/lib/coolpy7", "-dfs=0"],
        "-dfs=0 said, not left to the broker's default"
    );
    // "" is a class: none, so that only volumes without one are bound.
    let no_class = cluster_with(json!({"persistence": {"enabled": true, "storageClassName": ""}}));
    assert_eq!(
        data_claim_template(&no_class)
            .unwrap()
            .spec
            .unwrap()
            .storage_class_name
            .as_deref(),
        Some("")
    );
}

#[test]
fn the_data_volume_is_mounted_beside_the_secrets() {
    let cluster = cluster_with(json!({
        "listeners": {"tls": {"enabled": true}},
        "tls": {"secretName": "mq-cert"},
        "persistence": {"enabled": true}
    }));
    let set = stateful_set(&cluster, DOMAIN);
    let mounts: Vec<(String, String, Option<bool>)> = container(&set)
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.mount_path, m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            ("tls".to_string(), TLS_DIR.to_string(), Some(true)),
            ("data".to_string(), DATA_DIR.to_string(), None),
        ]
    );
    let volumes: Vec<String> = pod_spec(&set)
        .volumes
        .clone()
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(
        volumes,
        ["tls"],
        "the data volume comes from the claim template"
    );
    assert_eq!(
        pod_spec(&set).security_context.as_ref().unwrap().fs_group,
        Some(SECRET_FILES_GROUP)
    );
}

#[test]
fn persistence_flags_come_after_the_drain_flags_and_before_spec_args() {
    let cluster = cluster_with(json!({
        "drain": {"graceSeconds": 60},
        "persistence": {"enabled": true, "fsyncIntervalMs": 250},
        "args": ["-mq=5000"]
    }));
    let args = broker_args(&cluster, DOMAIN);
    let position = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} in {args:?}"))
    };
    assert!(
        position("-dg=60") < position("-dd=/var/lib/coolpy7"),
        "{args:?}"
    );
    assert!(
        position("-dd=/var/lib/coolpy7") < position("-dfs=250"),
        "{args:?}"
    );
    assert!(position("-dfs=250") < position("-mq=5000"), "{args:?}");
}

#[test]
fn the_fsync_interval_changes_only_the_pod_template() {
    let set = |interval: i32| {
        stateful_set(
            &cluster_with(json!({"persistence": {"enabled": true,
                                                 "fsyncIntervalMs": interval}})),
            DOMAIN,
        )
    };
    let (every, batched) = (set(0), set(1000));
    assert_ne!(every, batched);
    let (every, batched) = (every.spec.unwrap(), batched.spec.unwrap());
    assert_ne!(every.template, batched.template, "a rolling update");
    assert_eq!(
        every.volume_claim_templates, batched.volume_claim_templates,
        "the claims, which cannot change, stay as they are"
    );
}
