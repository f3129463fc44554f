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
        Some(TERMINATION_GRACE_SECONDS)
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
