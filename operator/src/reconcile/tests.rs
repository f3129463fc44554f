//! Reconcile against a mocked API server: each test scripts the requests it expects, in order,
//! asserts method, path, field manager and the important body fields, and answers them.

use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use kube::runtime::events::Reporter;
use serde_json::{json, Value};

use super::*;
use crate::crd::Coolpy7ClusterSpec;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Responder = tower_test::mock::SendResponse<Response<Body>>;

const WAIT: Duration = Duration::from_secs(5);

fn cluster_with(spec: Value) -> Coolpy7Cluster {
    let spec: Coolpy7ClusterSpec = serde_json::from_value(spec).expect("a valid spec");
    let mut cluster = Coolpy7Cluster::new("mq", spec);
    cluster.metadata.namespace = Some("iot".into());
    cluster.metadata.uid = Some("0b5e-uid".into());
    cluster.metadata.generation = Some(4);
    cluster
}

fn context() -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: None,
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Context::new(
        client,
        "cluster.local".into(),
        recorder,
        Arc::new(Metrics::default()),
    );
    (Arc::new(ctx), handle)
}

/// One request the reconcile made.
struct Seen {
    method: Method,
    uri: String,
    body: Value,
    respond: Responder,
}

impl Seen {
    fn reply(self, code: u16, body: &Value) {
        let response = Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).expect("JSON")))
            .expect("response");
        self.respond.send_response(response);
    }

    /// Answers with what was sent, as the API server does for a create or an apply.
    fn echo(self) {
        let body = self.body.clone();
        self.reply(200, &body);
    }

    fn not_found(self) {
        self.reply(
            404,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "reason": "NotFound", "code": 404, "message": "not found"}),
        );
    }

    fn assert_apply(&self, path: &str) {
        assert_eq!(self.method, Method::PATCH, "{}", self.uri);
        assert!(
            self.uri.starts_with(path),
            "expected an apply of {path}, got {}",
            self.uri
        );
        assert!(
            self.uri.contains("fieldManager=coolpy7-operator"),
            "{}",
            self.uri
        );
        assert!(self.uri.contains("force=true"), "{}", self.uri);
    }
}

async fn next(handle: &mut Handle) -> Seen {
    let (request, respond) = tokio::time::timeout(WAIT, handle.next_request())
        .await
        .expect("the reconcile made no further request")
        .expect("the client is gone");
    let method = request.method().clone();
    let uri = request.uri().to_string();
    let bytes = request.into_body().collect_bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON body")
    };
    Seen {
        method,
        uri,
        body,
        respond,
    }
}

/// Answers the read of the key Secret `name` with `key` (its value "a2V5", i.e. "key").
async fn serve_key(handle: &mut Handle, name: &str, key: &str) {
    let get = next(handle).await;
    assert_eq!(get.method, Method::GET, "{}", get.uri);
    assert_eq!(get.uri, format!("/api/v1/namespaces/iot/secrets/{name}"));
    get.reply(
        200,
        &json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": "iot"}, "data": {key: "a2V5"}}),
    );
}

/// The applies of a valid spec, in order; answers each with `answer` (default: echo).
async fn expect_children(handle: &mut Handle, set_status: Option<Value>, pdb: bool) -> Vec<Value> {
    let mut bodies = Vec::new();
    let headless = next(handle).await;
    headless.assert_apply("/api/v1/namespaces/iot/services/mq-headless?");
    bodies.push(headless.body.clone());
    headless.echo();
    let service = next(handle).await;
    service.assert_apply("/api/v1/namespaces/iot/services/mq?");
    bodies.push(service.body.clone());
    service.echo();
    let set = next(handle).await;
    set.assert_apply("/apis/apps/v1/namespaces/iot/statefulsets/mq?");
    bodies.push(set.body.clone());
    let mut answer = set.body.clone();
    if let Some(status) = set_status {
        answer["status"] = status;
    }
    set.reply(200, &answer);
    let budget = next(handle).await;
    if pdb {
        budget.assert_apply("/apis/policy/v1/namespaces/iot/poddisruptionbudgets/mq?");
        bodies.push(budget.body.clone());
        budget.echo();
    } else {
        assert_eq!(budget.method, Method::DELETE, "{}", budget.uri);
        assert!(budget
            .uri
            .starts_with("/apis/policy/v1/namespaces/iot/poddisruptionbudgets/mq"));
        budget.not_found();
    }
    bodies
}

/// The status patch; answers with the cluster and returns the patch body.
async fn expect_status(handle: &mut Handle, cluster: &Coolpy7Cluster) -> Value {
    let status = next(handle).await;
    assert_eq!(status.method, Method::PATCH, "{}", status.uri);
    assert!(
        status
            .uri
            .starts_with("/apis/coolpy7.io/v1alpha1/namespaces/iot/coolpy7clusters/mq/status?"),
        "{}",
        status.uri
    );
    let body = status.body.clone();
    status.reply(200, &serde_json::to_value(cluster).expect("JSON"));
    body
}

async fn expect_event(handle: &mut Handle, reason: &str) -> Value {
    let event = next(handle).await;
    assert_eq!(event.method, Method::POST, "{}", event.uri);
    assert!(
        event
            .uri
            .starts_with("/apis/events.k8s.io/v1/namespaces/iot/events"),
        "{}",
        event.uri
    );
    assert_eq!(event.body["reason"], reason, "{}", event.body);
    assert_eq!(event.body["regarding"]["name"], "mq");
    assert_eq!(event.body["regarding"]["kind"], "Coolpy7Cluster");
    let body = event.body.clone();
    event.echo();
    body
}

async fn expect_quiet(handle: &mut Handle) {
    if let Ok(Some((request, _))) =
        tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
    {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
}

#[tokio::test]
async fn first_reconcile_creates_the_key_applies_every_child_and_reports_the_status() {
    let (ctx, mut handle) = context();
    let cluster = cluster_with(json!({}));
    let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx.clone()));

    let get = next(&mut handle).await;
    assert_eq!(get.method, Method::GET);
    assert_eq!(get.uri, "/api/v1/namespaces/iot/secrets/mq-csk");
    get.not_found();
    let create = next(&mut handle).await;
    assert_eq!(create.method, Method::POST);
    assert!(
        create.uri.starts_with("/api/v1/namespaces/iot/secrets?"),
        "{}",
        create.uri
    );
    assert!(
        create.uri.contains("fieldManager=coolpy7-operator"),
        "{}",
        create.uri
    );
    assert_eq!(create.body["metadata"]["name"], "mq-csk");
    assert_eq!(
        create.body["metadata"]["ownerReferences"][0]["kind"],
        "Coolpy7Cluster"
    );
    let encoded = create.body["data"]["csk"]
        .as_str()
        .expect("base64 key")
        .to_string();
    assert_eq!(encoded.len(), 88, "64 hex characters, in base64");
    create.echo();
    expect_event(&mut handle, "CskCreated").await;

    let bodies = expect_children(&mut handle, None, true).await;
    assert_eq!(bodies[0]["spec"]["clusterIP"], "None");
    assert_eq!(bodies[0]["spec"]["ports"][0]["protocol"], "UDP");
    assert_eq!(bodies[1]["spec"]["type"], "LoadBalancer");
    assert_eq!(bodies[2]["spec"]["replicas"], 3);
    assert_eq!(bodies[2]["kind"], "StatefulSet");
    let fingerprint =
        &bodies[2]["spec"]["template"]["metadata"]["annotations"][children::KEY_ANNOTATION];
    assert_eq!(
        fingerprint.as_str().map(str::len),
        Some(16),
        "the new key's fingerprint"
    );
    assert_eq!(bodies[3]["spec"]["maxUnavailable"], 1);
    for body in &bodies {
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "0b5e-uid");
    }

    let status = expect_status(&mut handle, &cluster).await;
    let status = &status["status"];
    assert_eq!(status["phase"], "Pending");
    assert_eq!(status["observedGeneration"], 4);
    assert_eq!(status["cskSecret"], "mq-csk");
    assert_eq!(status["seeds"].as_array().map(Vec::len), Some(3));
    assert_eq!(status["selector"], children::selector_string(&cluster));
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "False");

    let action = run.await.expect("task").expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(RESYNC));
    assert_eq!(ctx.metrics.reconciles.get(), 1);
    expect_quiet(&mut handle).await;
}

#[tokio::test]
async fn steady_state_keeps_the_key_reapplies_and_reports_running() {
    let (ctx, mut handle) = context();
    let mut cluster = cluster_with(json!({}));
    cluster.metadata.annotations = None;
    let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
    let get = next(&mut handle).await;
    assert_eq!(get.uri, "/api/v1/namespaces/iot/secrets/mq-csk");
    // It exists: never created or written again.
    let existing = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mq-csk", "namespace": "iot"},
                          "data": {"csk": "a2V5"}});
    get.reply(200, &existing);
    expect_children(
        &mut handle,
        Some(
            json!({"replicas": 3, "readyReplicas": 3, "updatedReplicas": 3, "observedGeneration": 1,
                    "currentRevision": "mq-5d8f", "updateRevision": "mq-5d8f"}),
        ),
        true,
    )
    .await;
    let status = expect_status(&mut handle, &cluster).await;
    assert_eq!(status["status"]["phase"], "Running");
    assert_eq!(status["status"]["readyReplicas"], 3);
    let conditions = status["status"]["conditions"].as_array().unwrap();
    let of = |t: &str| conditions.iter().find(|c| c["type"] == t).unwrap()["status"].clone();
    assert_eq!(
        (of("Ready"), of("Progressing"), of("Degraded")),
        (json!("True"), json!("False"), json!("False"))
    );
    run.await.expect("task").expect("reconcile succeeds");
    expect_quiet(&mut handle).await;
}

#[tokio::test]
async fn scaling_applies_a_new_replica_count_and_the_same_pod_template() {
    for replicas in [5, 1] {
        let (ctx, mut handle) = context();
        let cluster = cluster_with(json!({"replicas": replicas, "csk": {"secretName": "k"}}));
        let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
        serve_key(&mut handle, "k", "csk").await;
        let bodies = expect_children(&mut handle, None, true).await;
        assert_eq!(bodies[2]["spec"]["replicas"], replicas);
        // What a 3-replica cluster with the same key gets.
        let three = serde_json::to_value(children::with_key_fingerprint(
            children::stateful_set(
                &cluster_with(json!({"replicas": 3, "csk": {"secretName": "k"}})),
                "cluster.local",
            ),
            &children::key_fingerprint(b"key"),
        ))
        .unwrap();
        assert_eq!(
            bodies[2]["spec"]["template"], three["spec"]["template"],
            "no rolling restart"
        );
        expect_status(&mut handle, &cluster).await;
        run.await.expect("task").expect("reconcile succeeds");
    }
}

#[tokio::test]
async fn an_existing_key_secret_is_used_and_never_created() {
    let (ctx, mut handle) = context();
    let cluster = cluster_with(json!({"csk": {"secretName": "shared", "key": "k"}}));
    let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
    // Read, never created or written.
    serve_key(&mut handle, "shared", "k").await;
    let bodies = expect_children(&mut handle, None, true).await;
    let env = bodies[2]["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let csk = env.iter().find(|e| e["name"] == "COOLPY7_CSK").unwrap();
    assert_eq!(csk["valueFrom"]["secretKeyRef"]["name"], "shared");
    assert_eq!(csk["valueFrom"]["secretKeyRef"]["key"], "k");
    let status = expect_status(&mut handle, &cluster).await;
    assert_eq!(status["status"]["cskSecret"], "shared");
    run.await.expect("task").expect("reconcile succeeds");
}

#[tokio::test]
async fn a_missing_key_secret_is_reported_degraded_without_touching_the_children() {
    for (answer, expected) in [
        (None, "does not exist"),
        (Some(json!({"other": "a2V5"})), "has no key \"csk\""),
    ] {
        let (ctx, mut handle) = context();
        let cluster = cluster_with(json!({"csk": {"secretName": "shared"}}));
        let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
        let get = next(&mut handle).await;
        assert_eq!(get.uri, "/api/v1/namespaces/iot/secrets/shared");
        match answer {
            None => get.not_found(),
            Some(data) => get.reply(
                200,
                &json!({"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": "shared", "namespace": "iot"}, "data": data}),
            ),
        }
        let event = expect_event(&mut handle, "CskMissing").await;
        assert!(
            event["note"].as_str().unwrap().contains(expected),
            "{event}"
        );
        let status = expect_status(&mut handle, &cluster).await;
        assert_eq!(status["status"]["phase"], "Degraded");
        assert_eq!(degraded_condition(&status)["reason"], "CskMissing");
        assert_eq!(
            run.await.expect("task").expect("handled"),
            Action::requeue(KEY_RETRY)
        );
        expect_quiet(&mut handle).await;
    }
}

#[tokio::test]
async fn a_disabled_budget_is_deleted() {
    let (ctx, mut handle) = context();
    let cluster = cluster_with(
        json!({"csk": {"secretName": "k"}, "podDisruptionBudget": {"enabled": false}}),
    );
    let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
    serve_key(&mut handle, "k", "csk").await;
    expect_children(&mut handle, None, false).await;
    expect_status(&mut handle, &cluster).await;
    run.await.expect("task").expect("a missing budget is fine");
}

#[tokio::test]
async fn an_api_error_fails_the_reconcile_and_is_retried_with_backoff_and_an_event() {
    let (ctx, mut handle) = context();
    let cluster = Arc::new(cluster_with(json!({"csk": {"secretName": "k"}})));
    let run = tokio::spawn(reconcile(cluster.clone(), ctx.clone()));
    serve_key(&mut handle, "k", "csk").await;
    let apply = next(&mut handle).await;
    apply.assert_apply("/api/v1/namespaces/iot/services/mq-headless?");
    apply.reply(
        500,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                             "reason": "InternalError", "code": 500, "message": "etcd is down"}),
    );
    let error = run.await.expect("task").expect_err("the reconcile fails");
    assert!(error.to_string().contains("etcd is down"), "{error}");

    assert_eq!(
        error_policy(cluster.clone(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    let event = expect_event(&mut handle, "ReconcileFailed").await;
    assert_eq!(event["type"], "Warning");
    assert!(event["note"].as_str().unwrap().contains("etcd is down"));
    assert_eq!(
        error_policy(cluster.clone(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    // The same event again is counted in a series on the first one.
    let again = next(&mut handle).await;
    assert_eq!(again.method, Method::PATCH, "{}", again.uri);
    assert!(
        again
            .uri
            .starts_with("/apis/events.k8s.io/v1/namespaces/iot/events/mq."),
        "{}",
        again.uri
    );
    again.reply(200, &event);
    assert_eq!(ctx.metrics.failures.get(), 2);
}

#[tokio::test]
async fn a_spec_the_schema_cannot_catch_is_reported_degraded_without_touching_the_children() {
    let (ctx, mut handle) = context();
    let cluster = cluster_with(json!({"ports": {"mqtt": 8081}, "csk": {"secretName": "k"}}));
    let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
    let event = expect_event(&mut handle, "InvalidSpec").await;
    assert_eq!(event["type"], "Warning");
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("ports.mqtt and ports.http"),
        "{event}"
    );
    let status = expect_status(&mut handle, &cluster).await;
    assert_eq!(status["status"]["phase"], "Degraded");
    let degraded = status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()
        .clone();
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "InvalidSpec");
    // Not an error: no crash loop, just a slow look again.
    assert_eq!(
        run.await.expect("task").expect("handled"),
        Action::requeue(RESYNC)
    );
    expect_quiet(&mut handle).await;
}

#[tokio::test]
async fn a_cluster_being_deleted_is_left_to_the_garbage_collector() {
    let (ctx, mut handle) = context();
    let mut cluster = cluster_with(json!({}));
    cluster.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    let action = reconcile(Arc::new(cluster), ctx)
        .await
        .expect("nothing to do");
    assert_eq!(action, Action::await_change());
    expect_quiet(&mut handle).await;
}

#[test]
fn running_only_once_the_statefulset_has_rolled_out_this_spec() {
    let cluster = cluster_with(json!({}));
    let service = children::client_service(&cluster);
    let set_with = |generation: i64, status: Value| {
        let mut set = children::stateful_set(&cluster, "cluster.local");
        set.metadata.generation = Some(generation);
        set.status = Some(serde_json::from_value(status).expect("a StatefulSetStatus"));
        set
    };
    let all_ready = |observed: i64, current: &str| {
        json!({"replicas": 3, "readyReplicas": 3, "updatedReplicas": 3,
               "observedGeneration": observed, "currentRevision": current, "updateRevision": "r2"})
    };
    let phase = |set: &StatefulSet| observed_status(&cluster, set, &service, "cluster.local").phase;
    assert_eq!(
        phase(&set_with(2, all_ready(2, "r2"))),
        Some(Phase::Running)
    );
    // Just applied: the controller has not seen generation 2 yet.
    assert_eq!(
        phase(&set_with(2, all_ready(1, "r2"))),
        Some(Phase::Progressing)
    );
    // Seen, but the pods still run the previous revision.
    assert_eq!(
        phase(&set_with(2, all_ready(2, "r1"))),
        Some(Phase::Progressing)
    );
    assert_eq!(
        phase(&set_with(2, json!({"replicas": 3, "readyReplicas": 0}))),
        Some(Phase::Pending)
    );
}

#[tokio::test]
async fn a_child_the_api_server_refuses_is_reported_degraded() {
    let (ctx, mut handle) = context();
    let cluster = cluster_with(
        json!({"csk": {"secretName": "k"}, "resources": {"limits": {"memory": "lots"}}}),
    );
    let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx.clone()));
    serve_key(&mut handle, "k", "csk").await;
    for path in [
        "/api/v1/namespaces/iot/services/mq-headless?",
        "/api/v1/namespaces/iot/services/mq?",
    ] {
        let apply = next(&mut handle).await;
        apply.assert_apply(path);
        apply.echo();
    }
    let set = next(&mut handle).await;
    set.assert_apply("/apis/apps/v1/namespaces/iot/statefulsets/mq?");
    set.reply(
        422,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid",
                           "code": 422, "message": "quantities must match the regular expression"}),
    );
    // Made with the same (no) persistence: the API server's words are passed on.
    serve_stateful_set(&mut handle, Some(&cluster)).await;
    let event = expect_event(&mut handle, "InvalidSpec").await;
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("quantities must match"),
        "{event}"
    );
    let status = expect_status(&mut handle, &cluster).await;
    assert_eq!(status["status"]["phase"], "Degraded");
    assert_eq!(
        run.await.expect("task").expect("handled, not an error"),
        Action::requeue(RESYNC)
    );
    assert_eq!(ctx.metrics.failures.get(), 0);
}

#[test]
fn names_that_cannot_name_pods_and_services_are_problems() {
    let named = |name: &str| {
        let mut cluster = cluster_with(json!({}));
        cluster.metadata.name = Some(name.into());
        spec_problem(&cluster)
    };
    assert_eq!(named("mqtt-prod"), None);
    assert_eq!(named(&"a".repeat(52)), None);
    for bad in ["9lives", "my.cluster", "Mqtt", "mq-", &"a".repeat(53)] {
        assert!(named(bad).is_some(), "{bad}");
    }
}

#[test]
fn spec_problems() {
    assert_eq!(spec_problem(&cluster_with(json!({}))), None);
    assert!(
        spec_problem(&cluster_with(json!({"ports": {"gossip": 7947}})))
            .unwrap()
            .contains("ports.gossip and ports.sync")
    );
    for arg in ["-nid=x", "--mbs=a:1", "-csk", "-l=:1", "-crp=1"] {
        assert!(
            spec_problem(&cluster_with(json!({"args": [arg]}))).is_some(),
            "{arg}"
        );
    }
    assert_eq!(
        spec_problem(&cluster_with(json!({"args": ["-mq=5000", "-mif=64"]}))),
        None
    );
    // The MQTT 5 limits are the spec's, but args may override them (they come later).
    assert_eq!(
        spec_problem(&cluster_with(json!({
            "mqtt": {"serverKeepAlive": 60, "topicAliasMaximum": 10},
            "args": ["-mka=120", "--mta=0", "-mri=10"]
        }))),
        None
    );
    for arg in ["-mq 5000", "--help", "-V"] {
        assert!(
            spec_problem(&cluster_with(json!({"args": [arg]}))).is_some(),
            "{arg}"
        );
    }
    assert_eq!(
        spec_problem(&cluster_with(
            json!({"args": ["-syst=a token with spaces"]})
        )),
        None
    );
    assert!(spec_problem(&cluster_with(
        json!({"service": {"loadBalancerSourceRanges": ["10.0.0.0"]}})
    ))
    .is_some());
    assert!(spec_problem(&cluster_with(
        json!({"service": {"loadBalancerSourceRanges": ["10.0.0.0/33"]}})
    ))
    .is_some());
    assert_eq!(
        spec_problem(&cluster_with(
            json!({"service": {"loadBalancerSourceRanges": ["10.0.0.0/8", "fd00::/8"]}})
        )),
        None
    );
}

#[test]
fn backoff_doubles_up_to_five_minutes() {
    let delays: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
    assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    assert_eq!(backoff(u32::MAX).as_secs(), 300);
}

/// Answers the read of Secret `name` with `data` (base64 values), or 404 for None.
async fn serve_secret(handle: &mut Handle, name: &str, data: Option<Value>) {
    let get = next(handle).await;
    assert_eq!(get.method, Method::GET, "{}", get.uri);
    assert_eq!(get.uri, format!("/api/v1/namespaces/iot/secrets/{name}"));
    match data {
        None => get.not_found(),
        Some(data) => get.reply(
            200,
            &json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                    "metadata": {"name": name, "namespace": "iot"}, "data": data}),
        ),
    }
}

fn tls_cluster() -> Coolpy7Cluster {
    cluster_with(json!({
        "csk": {"secretName": "k"},
        "listeners": {"tls": {"enabled": true}, "websocketTls": {"enabled": true}},
        "tls": {"secretName": "mq-cert", "clientCASecretName": "iot-ca"}
    }))
}

#[tokio::test]
async fn tls_listeners_check_their_secrets_then_mount_them_and_open_their_ports() {
    let (ctx, mut handle) = context();
    let cluster = tls_cluster();
    let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
    serve_key(&mut handle, "k", "csk").await;
    // Read, never written: cert-manager (or the user) owns them.
    serve_secret(
        &mut handle,
        "mq-cert",
        Some(json!({"tls.crt": "Y2VydA==", "tls.key": "a2V5", "ca.crt": "Y2E="})),
    )
    .await;
    serve_secret(&mut handle, "iot-ca", Some(json!({"ca.crt": "Y2E="}))).await;
    let bodies = expect_children(&mut handle, None, true).await;
    let service_ports: Vec<&str> = bodies[1]["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(service_ports, ["mqtt", "mqtts", "wss"]);
    let pod = &bodies[2]["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "mq-cert");
    assert_eq!(pod["volumes"][1]["secret"]["secretName"], "iot-ca");
    assert_eq!(
        pod["securityContext"]["fsGroup"],
        children::SECRET_FILES_GROUP
    );
    let args = pod["containers"][0]["args"].as_array().unwrap();
    assert!(
        args.contains(&json!("-tca=/etc/coolpy7/client-ca/ca.crt")),
        "{args:?}"
    );
    let status = expect_status(&mut handle, &cluster).await;
    assert_eq!(status["status"]["phase"], "Pending");
    run.await.expect("task").expect("reconcile succeeds");
    expect_quiet(&mut handle).await;
}

#[tokio::test]
async fn a_missing_certificate_secret_is_reported_degraded_without_touching_the_children() {
    let complete = json!({"tls.crt": "Y2VydA==", "tls.key": "a2V5"});
    for (cert, ca, expected) in [
        (None, None, "Secret mq-cert (tls.secretName) does not exist"),
        (
            Some(json!({"tls.crt": "Y2VydA=="})),
            None,
            "Secret mq-cert (tls.secretName) has no \"tls.key\"",
        ),
        (
            Some(json!({"tls.crt": "", "tls.key": ""})),
            None,
            "has no \"tls.crt\" or \"tls.key\"",
        ),
        (
            Some(complete.clone()),
            Some(None),
            "Secret iot-ca (tls.clientCASecretName) does not exist",
        ),
        (
            Some(complete.clone()),
            Some(Some(json!({"ca.pem": "Y2E="}))),
            "Secret iot-ca (tls.clientCASecretName) has no \"ca.crt\"",
        ),
    ] {
        let (ctx, mut handle) = context();
        let cluster = tls_cluster();
        let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
        serve_key(&mut handle, "k", "csk").await;
        let cert_exists = cert.is_some();
        serve_secret(&mut handle, "mq-cert", cert).await;
        if let Some(ca) = ca {
            assert!(cert_exists);
            serve_secret(&mut handle, "iot-ca", ca).await;
        }
        let event = expect_event(&mut handle, "TlsSecretMissing").await;
        assert!(
            event["note"].as_str().unwrap().contains(expected),
            "{event}"
        );
        let status = expect_status(&mut handle, &cluster).await;
        assert_eq!(status["status"]["phase"], "Degraded");
        let degraded = status["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Degraded")
            .unwrap()
            .clone();
        assert_eq!(degraded["status"], "True");
        assert_eq!(
            degraded["reason"], "TlsSecretMissing",
            "the condition says why, as the Event does"
        );
        assert!(
            degraded["message"].as_str().unwrap().contains(expected),
            "{degraded}"
        );
        // Looked at again soon: cert-manager may be about to issue it.
        assert_eq!(
            run.await.expect("task").expect("handled"),
            Action::requeue(KEY_RETRY)
        );
        expect_quiet(&mut handle).await;
    }
}

#[test]
fn listener_and_tls_problems() {
    let problem = |spec: Value| spec_problem(&cluster_with(spec));
    let tls = json!({"secretName": "c"});
    assert_eq!(
        problem(
            json!({"listeners": {"tls": {"enabled": true}, "websocket": {"enabled": true},
                                     "websocketTls": {"enabled": true}}, "tls": tls})
        ),
        None
    );
    assert!(problem(json!({"listeners": {"mqtt": {"enabled": false}}}))
        .unwrap()
        .contains("enable at least one"));
    for listener in ["tls", "websocketTls"] {
        for tls in [json!(null), json!({}), json!({"clientCASecretName": "ca"})] {
            assert!(
                problem(json!({"listeners": {listener: {"enabled": true}}, "tls": tls}))
                    .unwrap()
                    .contains("need tls.secretName"),
                "{listener} {tls}"
            );
        }
    }
    // Ports: among the enabled listeners, and against the cluster's own.
    assert!(
        problem(json!({"listeners": {"websocket": {"enabled": true, "port": 1883}}}))
            .unwrap()
            .contains("ports.mqtt and listeners.websocket.port are both 1883")
    );
    assert!(
        problem(json!({"listeners": {"tls": {"enabled": true, "port": 7946}}, "tls": tls}))
            .unwrap()
            .contains("ports.gossip and listeners.tls.port")
    );
    assert!(problem(json!({"listeners": {"websocket": {"enabled": true},
                                         "websocketTls": {"enabled": true, "port": 8083}},
                           "tls": tls}))
    .unwrap()
    .contains("listeners.websocket.port and listeners.websocketTls.port"));
    // A disabled listener's port is not opened.
    assert_eq!(
        problem(json!({"listeners": {"websocket": {"port": 1883}}})),
        None
    );
    assert_eq!(
        problem(json!({"listeners": {"mqtt": {"enabled": false},
                                     "websocket": {"enabled": true, "port": 1883}}})),
        None,
        "the plain port is free when its listener is off"
    );
    // Client certificates.
    let with_tls =
        |tls: Value| problem(json!({"listeners": {"tls": {"enabled": true}}, "tls": tls}));
    for verify in ["optional", "required"] {
        assert!(
            with_tls(json!({"secretName": "c", "verifyClients": verify}))
                .unwrap()
                .contains("needs tls.clientCASecretName")
        );
        assert_eq!(
            with_tls(json!({"secretName": "c", "verifyClients": verify,
                            "clientCASecretName": "ca"})),
            None
        );
    }
    assert_eq!(
        with_tls(json!({"secretName": "c", "verifyClients": "none"})),
        None
    );
    for username in ["cn", "san"] {
        assert_eq!(
            with_tls(json!({"secretName": "c", "clientCASecretName": "ca",
                            "usernameFromCertificate": username})),
            None
        );
        for tls in [
            json!({"secretName": "c", "usernameFromCertificate": username}),
            json!({"secretName": "c", "clientCASecretName": "ca", "verifyClients": "none",
                   "usernameFromCertificate": username}),
        ] {
            assert!(
                with_tls(tls.clone())
                    .unwrap()
                    .contains("usernameFromCertificate needs client certificates"),
                "{tls}"
            );
        }
    }
    // The operator's listener flags and files are its own; the settings may be overridden.
    for arg in [
        "-tl=:9883",
        "-wl=:1",
        "--wsl=:2",
        "-tc=/x",
        "-tk=/y",
        "-tca=/z",
    ] {
        assert!(problem(json!({"args": [arg]})).is_some(), "{arg}");
    }
    assert_eq!(
        problem(json!({"args": ["-tv=optional", "-tcn=cn", "-pp=tcp", "-wsp=/x", "-tri=10"]})),
        None
    );
}

#[test]
fn endpoints_name_every_enabled_listener() {
    let cluster = cluster_with(json!({
        "listeners": {"tls": {"enabled": true}, "websocket": {"enabled": true},
                      "websocketTls": {"enabled": true}, "websocketPath": "/ws"},
        "tls": {"secretName": "c"}
    }));
    let mut service = children::client_service(&cluster);
    service.status = Some(
        serde_json::from_value(json!({"loadBalancer": {"ingress": [
            {"ip": "203.0.113.7"}, {"hostname": "mq.example.org"}, {"ip": "2001:db8::7"}
        ]}}))
        .expect("a ServiceStatus"),
    );
    let set = children::stateful_set(&cluster, "cluster.local");
    let status = observed_status(&cluster, &set, &service, "cluster.local");
    assert_eq!(
        status.endpoints,
        [
            "203.0.113.7:1883",
            "mqtts://203.0.113.7:8883",
            "ws://203.0.113.7:8083/ws",
            "wss://203.0.113.7:8084/ws",
            "mq.example.org:1883",
            "mqtts://mq.example.org:8883",
            "ws://mq.example.org:8083/ws",
            "wss://mq.example.org:8084/ws",
            "2001:db8::7:1883",
            "mqtts://[2001:db8::7]:8883",
            "ws://[2001:db8::7]:8083/ws",
            "wss://[2001:db8::7]:8084/ws",
        ]
    );
    // Without other listeners, as before.
    let plain = cluster_with(json!({}));
    let status = observed_status(&plain, &set, &service, "cluster.local");
    assert_eq!(
        status.endpoints,
        [
            "203.0.113.7:1883",
            "mq.example.org:1883",
            "2001:db8::7:1883"
        ]
    );
}

/// The Degraded condition of a status patch.
fn degraded_condition(status: &Value) -> Value {
    status["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Degraded")
        .expect("a Degraded condition")
        .clone()
}

/// Answers the read of ConfigMap `name` with `data` (text values), or 404 for None.
async fn serve_config_map(handle: &mut Handle, name: &str, data: Option<Value>) {
    let get = next(handle).await;
    assert_eq!(get.method, Method::GET, "{}", get.uri);
    assert_eq!(get.uri, format!("/api/v1/namespaces/iot/configmaps/{name}"));
    match data {
        None => get.not_found(),
        Some(data) => get.reply(
            200,
            &json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": "iot"}, "data": data}),
        ),
    }
}

fn auth_cluster() -> Coolpy7Cluster {
    cluster_with(json!({
        "csk": {"secretName": "k"},
        "auth": {"mode": "password", "passwordSecret": {"name": "mq-users", "key": "passwords"},
                 "aclConfigMap": {"name": "mq-acl", "key": "acl"}, "aclDefault": "deny"},
        "limits": {"connectionRate": 100},
        "listeners": {"coap": {"enabled": true}}
    }))
}

#[tokio::test]
async fn auth_objects_are_checked_then_mounted_and_their_files_passed() {
    let (ctx, mut handle) = context();
    let cluster = auth_cluster();
    let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
    serve_key(&mut handle, "k", "csk").await;
    // Read, never written: the user's.
    serve_secret(
        &mut handle,
        "mq-users",
        Some(json!({"passwords": "YWxpY2U6eA=="})),
    )
    .await;
    serve_config_map(&mut handle, "mq-acl", Some(json!({"acl": "user alice\n"}))).await;
    let bodies = expect_children(&mut handle, None, true).await;
    let service_ports: Vec<(&str, &str)> = bodies[1]["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["protocol"].as_str().unwrap()))
        .collect();
    assert_eq!(service_ports, [("mqtt", "TCP"), ("coap", "UDP")]);
    let pod = &bodies[2]["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "mq-users");
    assert_eq!(pod["volumes"][1]["configMap"]["name"], "mq-acl");
    assert_eq!(
        pod["containers"][0]["volumeMounts"],
        json!([
            {"name": "auth-passwords", "mountPath": "/etc/coolpy7/auth/passwords",
             "readOnly": true},
            {"name": "auth-acl", "mountPath": "/etc/coolpy7/auth/acl", "readOnly": true}
        ])
    );
    assert_eq!(
        pod["securityContext"]["fsGroup"],
        children::SECRET_FILES_GROUP
    );
    let args = pod["containers"][0]["args"].as_array().unwrap();
    for flag in [
        "-as=3",
        "-pwf=/etc/coolpy7/auth/passwords/passwords",
        "-acl=/etc/coolpy7/auth/acl/acl",
        "-acld=deny",
        "-cr=100",
        "-cl=:5683",
    ] {
        assert!(args.contains(&json!(flag)), "{flag} in {args:?}");
    }
    let status = expect_status(&mut handle, &cluster).await;
    assert_eq!(status["status"]["phase"], "Pending");
    assert_eq!(degraded_condition(&status)["status"], "False");
    run.await.expect("task").expect("reconcile succeeds");
    expect_quiet(&mut handle).await;
}

#[tokio::test]
async fn a_missing_auth_secret_or_acl_config_map_is_reported_degraded_without_touching_the_children(
) {
    let users = json!({"passwords": "YWxpY2U6eA=="});
    for (secret, acl, reason, expected) in [
        (
            None,
            None,
            "AuthSecretMissing",
            "Secret mq-users (auth.passwordSecret) does not exist",
        ),
        (
            Some(json!({"users": "YWxpY2U6eA=="})),
            None,
            "AuthSecretMissing",
            "Secret mq-users (auth.passwordSecret) has no \"passwords\"",
        ),
        (
            Some(json!({"passwords": ""})),
            None,
            "AuthSecretMissing",
            "Secret mq-users (auth.passwordSecret) has no \"passwords\"",
        ),
        (
            Some(users.clone()),
            Some(None),
            "AuthConfigMapMissing",
            "ConfigMap mq-acl (auth.aclConfigMap) does not exist",
        ),
        (
            Some(users.clone()),
            Some(Some(json!({"rules": "user alice"}))),
            "AuthConfigMapMissing",
            "ConfigMap mq-acl (auth.aclConfigMap) has no \"acl\"",
        ),
    ] {
        let (ctx, mut handle) = context();
        let cluster = auth_cluster();
        let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
        serve_key(&mut handle, "k", "csk").await;
        let secret_exists = secret.is_some();
        serve_secret(&mut handle, "mq-users", secret).await;
        if let Some(acl) = acl {
            assert!(secret_exists);
            serve_config_map(&mut handle, "mq-acl", acl).await;
        }
        // No applies: the pods would wait in ContainerCreating without saying why.
        let event = expect_event(&mut handle, reason).await;
        assert_eq!(event["type"], "Warning");
        let note = event["note"].as_str().unwrap();
        assert!(note.contains(expected), "{event}");
        assert!(!note.contains("cert-manager"), "no TLS hint: {note}");
        let status = expect_status(&mut handle, &cluster).await;
        assert_eq!(status["status"]["phase"], "Degraded");
        let degraded = degraded_condition(&status);
        assert_eq!(degraded["status"], "True");
        assert_eq!(degraded["reason"], reason);
        assert!(
            degraded["message"].as_str().unwrap().contains(expected),
            "{degraded}"
        );
        assert_eq!(
            run.await.expect("task").expect("handled"),
            Action::requeue(KEY_RETRY)
        );
        expect_quiet(&mut handle).await;
    }
}

#[tokio::test]
async fn the_certificate_is_checked_before_the_auth_secrets_each_with_its_reason() {
    for (mode_ref, field, volume_secret) in [
        (
            json!({"mode": "jwt", "jwtSecret": {"name": "mq-jwt", "key": "hmac"}}),
            "auth.jwtSecret",
            "mq-jwt",
        ),
        (
            json!({"mode": "jwt", "jwtPublicKey": {"name": "mq-jwt", "key": "hmac"}}),
            "auth.jwtPublicKey",
            "mq-jwt",
        ),
        (
            json!({"mode": "http", "httpHook": {
                "url": "http://auth.iot.svc/mqtt",
                "tokenSecret": {"name": "mq-jwt", "key": "hmac"}}}),
            "auth.httpHook.tokenSecret",
            "mq-jwt",
        ),
    ] {
        let (ctx, mut handle) = context();
        let cluster = cluster_with(json!({
            "csk": {"secretName": "k"},
            "listeners": {"tls": {"enabled": true}},
            "tls": {"secretName": "mq-cert"},
            "auth": mode_ref
        }));
        let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
        serve_key(&mut handle, "k", "csk").await;
        serve_secret(
            &mut handle,
            "mq-cert",
            Some(json!({"tls.crt": "Y2VydA==", "tls.key": "a2V5"})),
        )
        .await;
        serve_secret(&mut handle, volume_secret, None).await;
        let event = expect_event(&mut handle, "AuthSecretMissing").await;
        let expected = format!("Secret {volume_secret} ({field}) does not exist");
        assert!(
            event["note"].as_str().unwrap().contains(&expected),
            "{event}"
        );
        let status = expect_status(&mut handle, &cluster).await;
        assert_eq!(degraded_condition(&status)["reason"], "AuthSecretMissing");
        run.await.expect("task").expect("handled");
        expect_quiet(&mut handle).await;
    }
}

#[test]
fn mounted_object_problems_name_the_kind_the_object_and_the_field() {
    let cluster = auth_cluster();
    let mounted = children::mounted_objects(&cluster);
    let (users, acl) = (&mounted[0], &mounted[1]);
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "mq-users"},
                                                       "data": {"passwords": "eA=="}}))
    .unwrap();
    assert_eq!(
        mounted_object_problem(users, Some(Fetched::Secret(&secret))),
        None
    );
    // A ConfigMap's key may be text or bytes.
    for map in [
        json!({"metadata": {"name": "mq-acl"}, "data": {"acl": "user alice"}}),
        json!({"metadata": {"name": "mq-acl"}, "binaryData": {"acl": "eA=="}}),
    ] {
        let map: ConfigMap = serde_json::from_value(map).unwrap();
        assert_eq!(
            mounted_object_problem(acl, Some(Fetched::ConfigMap(&map))),
            None
        );
    }
    let empty: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "mq-acl"}, "data": {"acl": ""}}))
            .unwrap();
    assert_eq!(
        mounted_object_problem(acl, Some(Fetched::ConfigMap(&empty))).as_deref(),
        Some("ConfigMap mq-acl (auth.aclConfigMap) has no \"acl\"")
    );
    assert_eq!(
        mounted_object_problem(acl, None).as_deref(),
        Some("ConfigMap mq-acl (auth.aclConfigMap) does not exist")
    );
}

#[test]
fn auth_coap_and_their_flags_problems() {
    let problem = |spec: Value| spec_problem(&cluster_with(spec));
    let secret = json!({"name": "s", "key": "k"});
    for auth in [
        json!({"mode": "jwt", "jwtSecret": secret}),
        json!({"mode": "jwt", "jwtPublicKey": secret}),
        json!({"mode": "password", "passwordSecret": secret}),
        json!({"mode": "http", "httpHook": {"url": "http://auth.example.org/mqtt"}}),
        json!({"mode": "none", "aclConfigMap": secret, "aclDefault": "allow"}),
        json!({}),
    ] {
        assert_eq!(problem(json!({ "auth": auth })), None, "{auth}");
    }
    for (auth, expected) in [
        (
            json!({"mode": "jwt"}),
            "auth.mode jwt needs one of auth.jwtSecret",
        ),
        (
            json!({"mode": "jwt", "jwtSecret": secret, "jwtPublicKey": secret}),
            "not both",
        ),
        (
            json!({"mode": "password", "jwtSecret": secret}),
            "auth.mode password needs auth.passwordSecret",
        ),
        (
            json!({"mode": "http"}),
            "auth.mode http needs auth.httpHook.url",
        ),
        (
            json!({"mode": "http", "httpHook": {"url": "https://auth/mqtt"}}),
            "must be an http:// URL",
        ),
        (
            json!({"mode": "http", "httpHook": {"url": "http://user:pw@auth/mqtt"}}),
            "without user:password@",
        ),
    ] {
        assert!(
            problem(json!({ "auth": auth }))
                .unwrap_or_default()
                .contains(expected),
            "{auth}"
        );
    }
    // CoAP is UDP: only the other UDP ports are in its way, and only when it is on.
    for port in [7946, 7947] {
        assert!(
            problem(json!({"listeners": {"coap": {"enabled": true, "port": port}}}))
                .unwrap_or_default()
                .contains("listeners.coap.port are both"),
            "{port}"
        );
        assert_eq!(
            problem(json!({"listeners": {"coap": {"enabled": false, "port": port}}})),
            None
        );
    }
    assert_eq!(
        problem(json!({"listeners": {"coap": {"enabled": true, "port": 1883}}})),
        None,
        "TCP 1883 and UDP 1883 are two ports"
    );
    assert!(
        problem(json!({"listeners": {"mqtt": {"enabled": false}, "coap": {"enabled": true}}}))
            .unwrap_or_default()
            .contains("enable at least one"),
        "CoAP alone is no MQTT listener"
    );
    // The mode, the files and the CoAP listener are the operator's; the settings may be
    // overridden.
    for arg in [
        "-as=1",
        "--jsk=plain-secret",
        "-jskf=/x",
        "-jpk=/x",
        "-pwf=/x",
        "-acl=/x",
        "-ht=plain-token",
        "-htf=/x",
        "-cl=:5683",
    ] {
        assert!(problem(json!({"args": [arg]})).is_some(), "{arg}");
    }
    assert_eq!(
        problem(
            json!({"args": ["-acld=allow", "-ha=http://a/", "-hat=1", "-hac=5", "-ari=10",
                                "-pl=5", "-psl=10", "-dt=60", "-cr=10", "-prm=5", "-prb=1000"]})
        ),
        None
    );
}

#[test]
fn endpoints_name_the_coap_listener() {
    let cluster = cluster_with(json!({"listeners": {"coap": {"enabled": true, "port": 5684}}}));
    let mut service = children::client_service(&cluster);
    service.status = Some(
        serde_json::from_value(json!({"loadBalancer": {"ingress": [
            {"ip": "203.0.113.7"}, {"ip": "2001:db8::7"}
        ]}}))
        .expect("a ServiceStatus"),
    );
    let set = children::stateful_set(&cluster, "cluster.local");
    let status = observed_status(&cluster, &set, &service, "cluster.local");
    assert_eq!(
        status.endpoints,
        [
            "203.0.113.7:1883",
            "coap://203.0.113.7:5684",
            "2001:db8::7:1883",
            "coap://[2001:db8::7]:5684",
        ]
    );
}

#[test]
fn forwarding_problems() {
    let problem = |spec: Value| spec_problem(&cluster_with(spec));
    for cluster in [
        json!({}),
        json!({"recordLimitBytes": 0}),
        json!({"recordLimitBytes": 64}),
        json!({"bufferBytes": 65536, "recordLimitBytes": 1_000_000_000_000_i64}),
    ] {
        assert_eq!(problem(json!({ "forwarding": cluster })), None, "{cluster}");
    }
    for limit in [1, 63] {
        assert_eq!(
            problem(json!({"forwarding": {"recordLimitBytes": limit}})),
            Some(format!(
                "forwarding.recordLimitBytes is {limit}: 0 (no limit) or at least 64 bytes"
            ))
        );
    }
    // The forwarding sizes are the spec's, but args may override them (they come later).
    assert_eq!(
        problem(json!({"forwarding": {"recordLimitBytes": 4096},
                       "args": ["-csl=8192", "--csb=1048576"]})),
        None
    );
}

#[tokio::test]
async fn forwarding_sizes_reach_the_pods_and_a_limit_the_broker_refuses_is_degraded() {
    let (ctx, mut handle) = context();
    let cluster = cluster_with(json!({"csk": {"secretName": "k"},
                                      "forwarding": {"bufferBytes": 33554432,
                                                  "recordLimitBytes": 0}}));
    let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
    serve_key(&mut handle, "k", "csk").await;
    let bodies = expect_children(&mut handle, None, true).await;
    let args = bodies[2]["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap();
    for flag in ["-csb=33554432", "-csl=0"] {
        assert!(args.contains(&json!(flag)), "{flag} in {args:?}");
    }
    let status = expect_status(&mut handle, &cluster).await;
    assert_eq!(degraded_condition(&status)["status"], "False");
    run.await.expect("task").expect("reconcile succeeds");
    expect_quiet(&mut handle).await;

    // The CRD's CEL rule refuses 1 to 63; an API server without CEL lets it through to here.
    let (ctx, mut handle) = context();
    let cluster = cluster_with(json!({"csk": {"secretName": "k"},
                                      "forwarding": {"recordLimitBytes": 32}}));
    let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
    let event = expect_event(&mut handle, "InvalidSpec").await;
    assert_eq!(event["type"], "Warning");
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("forwarding.recordLimitBytes is 32"),
        "{event}"
    );
    let status = expect_status(&mut handle, &cluster).await;
    assert_eq!(status["status"]["phase"], "Degraded");
    let degraded = degraded_condition(&status);
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "InvalidSpec");
    assert_eq!(
        run.await.expect("task").expect("handled"),
        Action::requeue(RESYNC)
    );
    expect_quiet(&mut handle).await;
}

#[test]
fn drain_problems() {
    let problem = |spec: Value| spec_problem(&cluster_with(spec));
    for drain in [
        json!({}),
        json!({"graceSeconds": 0, "disconnectRate": 0}),
        json!({"graceSeconds": 86400, "disconnectRate": 4_294_967_295_i64}),
        json!({"serverReference": "mqtt.example.org:1883"}),
        json!({"serverReference": "a".repeat(65535)}),
        // 21845 characters of 3 bytes: 65535 bytes.
        json!({"serverReference": "€".repeat(21845)}),
    ] {
        assert_eq!(problem(json!({ "drain": drain })), None, "{drain}");
    }
    // What the CRD's bounds, pattern and CEL rule refuse, for a cluster that got past them.
    for (reference, bytes) in [
        (String::new(), 0),
        ("a".repeat(65536), 65536),
        // Fewer characters than the CRD's maxLength, more bytes than the broker takes.
        ("€".repeat(21846), 65538),
        ("a\0b".to_string(), 3),
    ] {
        assert_eq!(
            problem(json!({"drain": {"serverReference": reference}})),
            Some(format!(
                "drain.serverReference is {bytes} bytes: 1 to 65535 bytes of UTF-8, without NUL"
            ))
        );
    }
    // The grace is the spec's alone: the pods' termination grace period is made from it.
    for args in [json!(["-dg=120"]), json!(["--dg=0"]), json!(["-dg", "120"])] {
        assert!(
            problem(json!({ "args": args }))
                .unwrap_or_default()
                .contains("set drain.graceSeconds instead"),
            "{args}"
        );
    }
    // The rate and the reference may be overridden (they come later).
    assert_eq!(
        problem(
            json!({"drain": {"disconnectRate": 100, "serverReference": "a:1883"},
                       "args": ["-dr=500", "--dsr=b:1883"]})
        ),
        None
    );
}

#[tokio::test]
async fn drain_settings_reach_the_pods_with_their_grace_period() {
    let (ctx, mut handle) = context();
    let cluster = cluster_with(json!({"csk": {"secretName": "k"},
                                      "drain": {"graceSeconds": 120, "disconnectRate": 200,
                                                "serverReference": "mqtt.example.org:1883"},
                                      "minReadySeconds": 30}));
    let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
    serve_key(&mut handle, "k", "csk").await;
    let bodies = expect_children(&mut handle, None, true).await;
    let set = &bodies[2]["spec"];
    let pod = &set["template"]["spec"];
    let args = pod["containers"][0]["args"].as_array().unwrap();
    for flag in ["-dg=120", "-dr=200", "-dsr=mqtt.example.org:1883"] {
        assert!(args.contains(&json!(flag)), "{flag} in {args:?}");
    }
    assert_eq!(
        pod["terminationGracePeriodSeconds"], 140,
        "120 s and the margin"
    );
    assert_eq!(set["minReadySeconds"], 30);
    assert_eq!(set["updateStrategy"], json!({"type": "RollingUpdate"}));
    let status = expect_status(&mut handle, &cluster).await;
    assert_eq!(degraded_condition(&status)["status"], "False");
    run.await.expect("task").expect("reconcile succeeds");
    expect_quiet(&mut handle).await;

    // Left out: the broker's own drain, the kubelet's grace made from its default, 30 s.
    let (ctx, mut handle) = context();
    let cluster = cluster_with(json!({"csk": {"secretName": "k"}}));
    let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
    serve_key(&mut handle, "k", "csk").await;
    let bodies = expect_children(&mut handle, None, true).await;
    let set = &bodies[2]["spec"];
    let args = set["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap();
    assert!(
        !args.iter().any(|arg| ["-dg=", "-dr=", "-dsr="]
            .iter()
            .any(|flag| arg.as_str().unwrap_or_default().starts_with(flag))),
        "{args:?}"
    );
    assert_eq!(set["template"]["spec"]["terminationGracePeriodSeconds"], 50);
    assert_eq!(set["minReadySeconds"], 10);
    expect_status(&mut handle, &cluster).await;
    run.await.expect("task").expect("reconcile succeeds");
    expect_quiet(&mut handle).await;

    // A reference the broker would refuse (past an API server without CEL): nothing applied.
    let (ctx, mut handle) = context();
    let cluster = cluster_with(json!({"csk": {"secretName": "k"},
                                      "drain": {"serverReference": "a".repeat(65536)}}));
    let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
    let event = expect_event(&mut handle, "InvalidSpec").await;
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("drain.serverReference is 65536 bytes"),
        "{event}"
    );
    let status = expect_status(&mut handle, &cluster).await;
    assert_eq!(degraded_condition(&status)["reason"], "InvalidSpec");
    assert_eq!(
        run.await.expect("task").expect("handled"),
        Action::requeue(RESYNC)
    );
    expect_quiet(&mut handle).await;
}

/// Answers the read of StatefulSet `mq` after a refused apply: as the operator built it for
/// `made_for`, or 404.
async fn serve_stateful_set(handle: &mut Handle, made_for: Option<&Coolpy7Cluster>) {
    let get = next(handle).await;
    assert_eq!(get.method, Method::GET, "{}", get.uri);
    assert_eq!(get.uri, "/apis/apps/v1/namespaces/iot/statefulsets/mq");
    match made_for {
        Some(cluster) => {
            let set = children::stateful_set(cluster, "cluster.local");
            get.reply(200, &serde_json::to_value(set).expect("JSON"));
        }
        None => get.not_found(),
    }
}

/// What the API server answers an apply that changes a StatefulSet's volume claim templates.
fn forbidden_statefulset_update() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid",
           "code": 422,
           "message": "StatefulSet.apps \"mq\" is invalid: spec: Forbidden: updates to \
                       statefulset spec for fields other than 'replicas', 'ordinals', \
                       'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and \
                       'minReadySeconds' are forbidden",
           "details": {"name": "mq", "group": "apps", "kind": "StatefulSet",
                       "causes": [{"reason": "FieldValueForbidden", "field": "spec"}]}})
}

#[test]
fn persistence_problems() {
    let problem = |spec: Value| spec_problem(&cluster_with(spec));
    for persistence in [
        json!({}),
        json!({"enabled": true}),
        json!({"enabled": true, "size": "500M", "storageClassName": "fast-ssd",
               "fsyncIntervalMs": 10000}),
        json!({"enabled": true, "size": "1.5Ti", "storageClassName": ""}),
        // The CRD's pattern refuses m (milli), for the 512m meant as 512Mi, but 1000m is a
        // whole byte all the same.
        json!({"enabled": true, "size": "1000m", "storageClassName": "ebs.csi.aws.com"}),
        // Unused while off, so not checked.
        json!({"enabled": false, "size": "0", "storageClassName": "Fast_SSD",
               "fsyncIntervalMs": -1}),
    ] {
        assert_eq!(
            problem(json!({ "persistence": persistence })),
            None,
            "{persistence}"
        );
    }
    // What the CRD's pattern and bounds refuse, and what its pattern lets through.
    for (persistence, expected) in [
        (json!({"size": "0"}), "persistence.size \"0\" is zero"),
        (
            json!({"size": "512m"}),
            "persistence.size \"512m\" is not a whole number of bytes",
        ),
        (
            json!({"size": "1GB"}),
            "persistence.size \"1GB\" is not a quantity",
        ),
        (
            json!({"size": "-1Gi"}),
            "persistence.size \"-1Gi\" is not a quantity",
        ),
        (json!({"size": "8Ei"}), "is larger than Kubernetes can hold"),
        (
            json!({"storageClassName": "Fast_SSD"}),
            "persistence.storageClassName \"Fast_SSD\" cannot name a StorageClass",
        ),
        (
            json!({"storageClassName": "a..b"}),
            "persistence.storageClassName \"a..b\" cannot name",
        ),
        (
            json!({"fsyncIntervalMs": 10001}),
            "persistence.fsyncIntervalMs is 10001: 0 (fsync before each acknowledgement) to \
             10000 milliseconds",
        ),
        (json!({"fsyncIntervalMs": -1}), "fsyncIntervalMs is -1"),
    ] {
        let mut persistence = persistence;
        persistence["enabled"] = json!(true);
        let found = problem(json!({ "persistence": persistence })).unwrap_or_default();
        assert!(found.contains(expected), "{persistence}: {found}");
    }
    // The data directory and its fsync are the spec's alone, persistence on or off.
    for enabled in [false, true] {
        for args in [
            json!(["-dd=/data"]),
            json!(["--dd=/data"]),
            json!(["-dd", "/data"]),
            json!(["-dd="]),
        ] {
            let found = problem(json!({"persistence": {"enabled": enabled}, "args": args}))
                .unwrap_or_default();
            assert!(
                found.contains("set persistence.enabled instead")
                    && found.contains("/var/lib/coolpy7"),
                "{args}: {found}"
            );
        }
        for args in [json!(["-dfs=100"]), json!(["--dfs", "0"])] {
            let found = problem(json!({"persistence": {"enabled": enabled}, "args": args}))
                .unwrap_or_default();
            assert!(
                found.contains("set persistence.fsyncIntervalMs instead"),
                "{args}: {found}"
            );
        }
    }
    // Flags that merely start alike are the user's.
    assert_eq!(problem(json!({"args": ["-ddx=1", "-dfsa=2"]})), None);
    // Nor may the environment set them.
    for (name, field) in [
        ("COOLPY7_DD", "persistence.enabled"),
        ("COOLPY7_DFS", "persistence.fsyncIntervalMs"),
        ("COOLPY7_DG", "drain.graceSeconds"),
    ] {
        let found = problem(json!({"env": [{"name": name, "value": "1"}]})).unwrap_or_default();
        assert!(
            found.contains(&format!("set {field} instead")),
            "{name}: {found}"
        );
    }
    assert_eq!(
        problem(json!({"env": [{"name": "COOLPY7_LOG_LEVEL", "value": "debug"}]})),
        None
    );
}

#[test]
fn persistence_changes_a_statefulset_cannot_take_say_what_to_do() {
    let built = |spec: Value| children::stateful_set(&cluster_with(spec), "cluster.local");
    let change = |spec: Value, made_with: Value| {
        persistence_change_problem(&cluster_with(spec), &built(made_with))
    };
    let on = |persistence: Value| {
        let mut persistence = persistence;
        persistence["enabled"] = json!(true);
        json!({ "persistence": persistence })
    };
    // Nothing the claim template holds changed.
    for (spec, made_with) in [
        (json!({}), json!({})),
        (json!({"persistence": {"size": "5Gi"}}), json!({})),
        (on(json!({})), on(json!({}))),
        (on(json!({"fsyncIntervalMs": 100})), on(json!({}))),
        // The API server writes sizes back in their shortest form.
        (on(json!({"size": "1024Mi"})), on(json!({"size": "1Gi"}))),
        (on(json!({"size": "1.5Gi"})), on(json!({"size": "1536Mi"}))),
        (
            on(json!({"storageClassName": "fast"})),
            on(json!({"storageClassName": "fast", "size": "1073741824"})),
        ),
    ] {
        assert_eq!(
            change(spec.clone(), made_with.clone()),
            None,
            "{spec} / {made_with}"
        );
    }

    let turned_on = change(on(json!({})), json!({})).expect("a problem");
    for part in [
        "persistence.enabled is true, but StatefulSet mq was made without a data volume",
        "never change",
        "kubectl delete statefulset mq -n iot --cascade=orphan",
        "set persistence.enabled back to false",
    ] {
        assert!(turned_on.contains(part), "{part}: {turned_on}");
    }
    let turned_off = change(json!({}), on(json!({}))).expect("a problem");
    for part in [
        "persistence.enabled is false, but StatefulSet mq was made with a data volume",
        "--cascade=orphan",
        "the claims data-mq-<n> stay until you delete them",
        "set persistence.enabled back to true",
    ] {
        assert!(turned_off.contains(part), "{part}: {turned_off}");
    }
    let grown = change(on(json!({"size": "5Gi"})), on(json!({}))).expect("a problem");
    for part in [
        "persistence.size is 5Gi, but StatefulSet mq was made with claims of 1Gi",
        "Set persistence.size back to 1Gi",
        "grow each claim data-mq-<n>",
        "--cascade=orphan",
    ] {
        assert!(grown.contains(part), "{part}: {grown}");
    }
    for (class, made_with, parts) in [
        (
            json!("fast"),
            Value::Null,
            [
                "persistence.storageClassName is fast",
                "made with left out (the default class)",
            ],
        ),
        (
            Value::Null,
            json!("fast"),
            [
                "persistence.storageClassName is left out (the default class)",
                "made with fast",
            ],
        ),
        (
            json!(""),
            json!("fast"),
            [
                "persistence.storageClassName is \"\" (no class)",
                "made with fast",
            ],
        ),
    ] {
        let mut spec = json!({});
        if !class.is_null() {
            spec["storageClassName"] = class.clone();
        }
        let mut old = json!({});
        if !made_with.is_null() {
            old["storageClassName"] = made_with.clone();
        }
        let moved = change(on(spec), on(old)).expect("a problem");
        for part in parts {
            assert!(moved.contains(part), "{part}: {moved}");
        }
        assert!(
            moved.contains("claims cannot move to another class"),
            "{moved}"
        );
    }
    // A StatefulSet that is not the operator's to read (no spec): persistence is the question.
    let bare = StatefulSet::default();
    assert!(persistence_change_problem(&cluster_with(on(json!({}))), &bare).is_some());
    assert_eq!(
        persistence_change_problem(&cluster_with(json!({})), &bare),
        None
    );
}

#[tokio::test]
async fn persistence_reaches_the_statefulset_as_claims_a_mount_and_flags() {
    let (ctx, mut handle) = context();
    let cluster = cluster_with(json!({"csk": {"secretName": "k"},
                                      "persistence": {"enabled": true, "size": "20Gi",
                                                      "storageClassName": "fast-ssd",
                                                      "fsyncIntervalMs": 50}}));
    let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
    serve_key(&mut handle, "k", "csk").await;
    let bodies = expect_children(&mut handle, None, true).await;
    let set = &bodies[2]["spec"];
    assert_eq!(
        set["volumeClaimTemplates"],
        json!([{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast-ssd",
                         "resources": {"requests": {"storage": "20Gi"}}}}])
    );
    assert_eq!(
        set["persistentVolumeClaimRetentionPolicy"],
        json!({"whenDeleted": "Retain", "whenScaled": "Delete"})
    );
    let pod = &set["template"]["spec"];
    let broker = &pod["containers"][0];
    assert_eq!(
        broker["volumeMounts"],
        json!([{"name": "data", "mountPath": "/var/lib/coolpy7"}])
    );
    let args = broker["args"].as_array().expect("args");
    for flag in ["-dd=/var/lib/coolpy7", "-dfs=50"] {
        assert!(args.contains(&json!(flag)), "{flag} in {args:?}");
    }
    assert_eq!(pod["securityContext"]["fsGroup"], 65532);
    assert_eq!(
        pod["securityContext"]["fsGroupChangePolicy"],
        "OnRootMismatch"
    );
    let status = expect_status(&mut handle, &cluster).await;
    assert_eq!(degraded_condition(&status)["status"], "False");
    run.await.expect("task").expect("reconcile succeeds");
    expect_quiet(&mut handle).await;

    // Off: nothing of it.
    let (ctx, mut handle) = context();
    let cluster = cluster_with(json!({"csk": {"secretName": "k"},
                                      "persistence": {"size": "20Gi", "fsyncIntervalMs": 50}}));
    let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
    serve_key(&mut handle, "k", "csk").await;
    let bodies = expect_children(&mut handle, None, true).await;
    let set = &bodies[2]["spec"];
    assert!(set.get("volumeClaimTemplates").is_none(), "{set}");
    assert!(
        set.get("persistentVolumeClaimRetentionPolicy").is_none(),
        "{set}"
    );
    let broker = &set["template"]["spec"]["containers"][0];
    assert!(broker.get("volumeMounts").is_none(), "{broker}");
    assert!(
        !broker["args"].as_array().expect("args").iter().any(|arg| {
            let arg = arg.as_str().unwrap_or_default();
            arg.starts_with("-dd=") || arg.starts_with("-dfs=")
        }),
        "{broker}"
    );
    expect_status(&mut handle, &cluster).await;
    run.await.expect("task").expect("reconcile succeeds");
    expect_quiet(&mut handle).await;
}

#[tokio::test]
async fn persistence_turned_on_or_off_on_a_running_cluster_is_degraded_not_retried_hot() {
    // (spec, what the StatefulSet was made for, what the message names)
    for (spec, made_for, names) in [
        (
            json!({"persistence": {"enabled": true}}),
            json!({}),
            "persistence.enabled is true, but StatefulSet mq was made without a data volume",
        ),
        (
            json!({}),
            json!({"persistence": {"enabled": true}}),
            "persistence.enabled is false, but StatefulSet mq was made with a data volume",
        ),
        (
            json!({"persistence": {"enabled": true, "size": "10Gi"}}),
            json!({"persistence": {"enabled": true}}),
            "persistence.size is 10Gi, but StatefulSet mq was made with claims of 1Gi",
        ),
    ] {
        let (ctx, mut handle) = context();
        let mut spec = spec;
        spec["csk"] = json!({"secretName": "k"});
        let cluster = cluster_with(spec);
        let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx.clone()));
        serve_key(&mut handle, "k", "csk").await;
        for path in [
            "/api/v1/namespaces/iot/services/mq-headless?",
            "/api/v1/namespaces/iot/services/mq?",
        ] {
            let apply = next(&mut handle).await;
            apply.assert_apply(path);
            apply.echo();
        }
        let set = next(&mut handle).await;
        set.assert_apply("/apis/apps/v1/namespaces/iot/statefulsets/mq?");
        set.reply(422, &forbidden_statefulset_update());
        serve_stateful_set(&mut handle, Some(&cluster_with(made_for))).await;
        let event = expect_event(&mut handle, "PersistenceImmutable").await;
        assert_eq!(event["type"], "Warning");
        let note = event["note"].as_str().unwrap_or_default();
        assert!(note.contains(names), "{note}");
        assert!(
            note.contains("kubectl delete statefulset mq -n iot --cascade=orphan"),
            "{note}"
        );
        let status = expect_status(&mut handle, &cluster).await;
        assert_eq!(status["status"]["phase"], "Degraded");
        let degraded = degraded_condition(&status);
        assert_eq!(degraded["status"], "True");
        assert_eq!(degraded["reason"], "PersistenceImmutable");
        assert!(
            degraded["message"]
                .as_str()
                .unwrap_or_default()
                .contains(names),
            "{degraded}"
        );
        // Handled, not an error: no backoff loop, and the budget is left as it was.
        assert_eq!(
            run.await.expect("task").expect("handled, not an error"),
            Action::requeue(RESYNC)
        );
        assert_eq!(ctx.metrics.failures.get(), 0);
        expect_quiet(&mut handle).await;
    }
}

#[tokio::test]
async fn a_refused_statefulset_that_is_not_there_is_the_api_servers_refusal() {
    let (ctx, mut handle) = context();
    let cluster = cluster_with(json!({"csk": {"secretName": "k"},
                                      "persistence": {"enabled": true}}));
    let run = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
    serve_key(&mut handle, "k", "csk").await;
    for _ in 0..2 {
        next(&mut handle).await.echo();
    }
    let set = next(&mut handle).await;
    set.assert_apply("/apis/apps/v1/namespaces/iot/statefulsets/mq?");
    set.reply(
        422,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid",
                "code": 422, "message": "spec.volumeClaimTemplates[0].spec.storageClassName: \
                                         Invalid value"}),
    );
    serve_stateful_set(&mut handle, None).await;
    let event = expect_event(&mut handle, "InvalidSpec").await;
    assert!(
        event["note"]
            .as_str()
            .unwrap_or_default()
            .contains("the API server refused a child object: spec.volumeClaimTemplates"),
        "{event}"
    );
    expect_status(&mut handle, &cluster).await;
    assert_eq!(
        run.await.expect("task").expect("handled"),
        Action::requeue(RESYNC)
    );
    expect_quiet(&mut handle).await;
}
