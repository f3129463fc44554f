//! Access control across a cluster: every node judges its own clients by its own rules, so a
//! message published on node A reaches only those subscribers on node B that B's rules let read
//! it (and a publish A's rules deny never leaves A).

use coolpy7_tests::client::qos;
use coolpy7_tests::cluster::start_cluster;
use coolpy7_tests::transport::TempDir;
use coolpy7_tests::{unique_id, SubscribeReasonCode, QUIET, TIMEOUT};

const RULES: &str = "\
deny subscribe secret/#
deny publish readonly/#
allow all #
";

#[tokio::test]
async fn a_message_from_one_node_reaches_only_the_remote_subscribers_that_may_read_it() {
    let dir = TempDir::new("cluster-acl");
    let rules = dir.write("rules.acl", RULES.as_bytes());
    let rules = rules.to_str().expect("utf-8 path");
    let nodes = start_cluster(2, &["-acl", rules]).await;
    let (a, b) = (&nodes[0], &nodes[1]);

    // On B: one subscriber of everything (granted with per-message checks), one refused.
    let mut everything = b.subscriber(&unique_id("all"), "#", qos(1)).await;
    let mut refused = b.client(&unique_id("secret")).await;
    let codes = refused.subscribe("secret/#", qos(1)).await;
    assert!(
        matches!(codes[..], [SubscribeReasonCode::Failure]),
        "{codes:?}"
    );

    let mut publisher = a.client(&unique_id("pub")).await;
    publisher
        .publish("secret/x", qos(1), false, b"hidden".to_vec())
        .await;
    publisher
        .publish("readonly/x", qos(1), false, b"dropped on A".to_vec())
        .await;
    publisher
        .publish("public/x", qos(1), false, b"shown".to_vec())
        .await;

    let got = everything.recv_publish(TIMEOUT).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("public/x", &b"shown"[..])
    );
    everything.expect_no_publish(QUIET).await;
    refused.expect_no_publish(QUIET).await;
    assert!(
        b.counter("coolpy7_authorization_denied_total{action=\"delivery\"}")
            .await
            >= 1.0,
        "B dropped secret/x for its subscriber"
    );
    assert_eq!(
        a.counter("coolpy7_authorization_denied_total{action=\"publish\"}")
            .await,
        1.0,
        "A refused readonly/x"
    );
}
