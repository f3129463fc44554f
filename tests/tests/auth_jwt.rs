//! JWT authentication (`-as 1`) through the real binary: HS256/384/512 tokens under `-jsk`,
//! refused credentials (expired, not yet valid, wrong secret, `alg: none`, tampered, empty
//! username, no password) answered 0x05 in 3.1.1 and 0x86 in MQTT 5 and counted, algorithm
//! confusion against `-jpk` (an HS256 token keyed with the public key's PEM), ES256 and EdDSA
//! public keys (and an RS256 token refused by them), a token's `exp` closing its connection
//! (MQTT 5 DISCONNECT 0x87 first), its `acl` claim as the client's only rights, a `-jskf` file
//! rewritten while running (by the `-ari` check and by SIGHUP), and secrets kept out of the log.
//!
//! Tokens are made here ([`coolpy7_tests::auth`]: HMAC with the hmac/sha2 crates, ECDSA and
//! Ed25519 with ring, keys from rcgen); the RS256 token and its key are OpenSSL's, copied from
//! the broker's unit-test fixtures so that one token here was signed by neither side's code.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coolpy7_tests::auth::{
    assert_refused_v3, assert_refused_v5, base64url, connack_code_v3, connack_code_v5,
    count_log_lines, hmac_token, hs256, now_secs, token, wait_log_count,
};
use coolpy7_tests::packets5::{self, PublishPacket, SubscribePacket};
use coolpy7_tests::raw::RawClient5;
use coolpy7_tests::transport::TempDir;
use coolpy7_tests::{packets, unique_id, Broker, Connect, Packet, RawClient, QUIET, TIMEOUT};
use serde_json::{json, Value};

const SECRET: &str = "e2e-jwt-secret-5b1f0c";
const BAD_CREDENTIALS: &str = "coolpy7_auth_failures_total{reason=\"bad_credentials\"}";

/// `broker/src/auth/testdata/rsa.pub.pem`: a 2048-bit RSA public key made by OpenSSL 3, whose
/// private key was not kept.
const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAuASezWRfRtIfKUJj8PUE
9Wi0gxTljFKQjjELlIwrDipik5kn9Vy2oNQRpYhsRKNvu3rVzGJ3JYp7IMQQ5zyr
a03UaRwlXA7VBO2Sn/IhMn3b4szir4D50ei7B5aPewwkw1zrVuPkmIwsLy9qgSkN
6ZgxWvR2nBe6wv+/JnXHzqty3lGJd9dyko28s9peO2QKV7v7hkag3e4jNgnaONJP
sP9S8tvZJJ3jf6X0n0DSpebBlKBeSD/dzjQA/fElPloUuFt38ghZS/5+hELsAEq9
xBxoJME6FIGcLRoBmWKMq1jAWdUcyTsncSqrgXw79dfsXMV5MMDAb2zlx89t+R+R
AQIDAQAB
-----END PUBLIC KEY-----
";

/// `broker/src/auth/testdata/rs256.jwt`: signed by `openssl dgst -sha256 -sign` with that key's
/// private half; claims `{"sub":"device-1","exp":2000000000,"acl":{"pub":["t/%c"],"sub":["t/#"]}}`.
const RS256_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJkZXZpY2UtMSIsImV4cCI6MjAwMDAwMDAwMCwiYWNsIjp7InB1YiI6WyJ0LyVjIl0sInN1YiI6WyJ0LyMiXX19.T_8AeF7g_5Q9Mu35vteWtvi0_BDPY65I_ZVR6xQdQR3RUk6Tvl_-M4K49RCWzVbTIiQMQ9sl4ap6VH6Y-V3aZ-W5BtJGpqnUnaz76Ldse_UNBchZ7x0Nxx5mWNMpZIRKiabcR2b9FLlugvlYsK2e0T7il6oD1vCqWOa__QKgGCrhaTQyMHRat68WSyRNP0HoHuqc0u17IwiMNNz7E44E3QsXV5oEugq3z_vZaDyDvPnYdCRy3zKtZFo0qZ6fVNjg-tllNHLWdzEgc3bMC_GgBjgYtymEdyhhRmFh6RCWQU0t9sV8AXFsNDYffbCFKs05Ebb5KdpIdJLX_OCOx87QVA";

fn start(extra: &[&str]) -> Broker {
    let mut args = vec!["-as", "1", "-jsk", SECRET];
    args.extend_from_slice(extra);
    Broker::start(&args)
}

/// A broker checking tokens with the PEM public key `pem` (`-jpk`); the directory holds it.
fn start_with_public_key(pem: &str) -> (Broker, TempDir) {
    let dir = TempDir::new("jwt-key");
    let path = dir.write("key.pem", pem.as_bytes());
    let broker = Broker::start(&["-as", "1", "-jpk", path.to_str().expect("utf-8 path")]);
    (broker, dir)
}

/// Claims valid for an hour.
fn valid_claims() -> Value {
    json!({"sub": "device", "exp": now_secs() + 3600})
}

fn v3(client_id: &str, token: &str) -> Connect {
    Connect::v311(client_id)
        .username("device")
        .password(token.as_bytes())
}

fn v5(client_id: &str, token: &str) -> packets5::Connect {
    packets5::Connect::new(client_id)
        .username("device")
        .password(token.as_bytes())
}

/// The signature part of a compact JWS.
fn signature(token: &str) -> &str {
    token.rsplit('.').next().expect("a JWS has parts")
}

#[tokio::test]
async fn hmac_tokens_of_each_hash_connect_in_3_1_1_and_5() {
    let broker = start(&[]);
    let addr = broker.mqtt_addr();
    for alg in ["HS256", "HS384", "HS512"] {
        let token = hmac_token(alg, SECRET.as_bytes(), &valid_claims());
        assert_eq!(
            connack_code_v3(addr, &v3(&unique_id(alg), &token)).await,
            0,
            "{alg}"
        );
        assert_eq!(
            connack_code_v5(addr, &v5(&unique_id(alg), &token)).await,
            0,
            "{alg}"
        );
    }
    // No exp: valid as long as the key is.
    let forever = hs256(SECRET.as_bytes(), &json!({"sub": "device"}));
    let (mut client, _) = RawClient::handshake(addr, &v3("forever", &forever)).await;
    client.ping().await;
    assert_eq!(broker.metric(BAD_CREDENTIALS).await, 0.0);
}

#[tokio::test]
async fn refused_credentials_get_0x05_in_3_1_1_and_0x86_in_5_and_are_counted() {
    let broker = start(&[]);
    let addr = broker.mqtt_addr();
    let secret = SECRET.as_bytes();
    let now = now_secs();
    let good = hs256(secret, &valid_claims());
    let alg_none = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(valid_claims().to_string().as_bytes())
    );
    // The claims of a good token swapped for others, its signature kept.
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        let claims = json!({"sub": "admin", "exp": now + 3600, "acl": {"all": ["#"]}});
        format!(
            "{}.{}.{}",
            parts[0],
            base64url(claims.to_string().as_bytes()),
            parts[2]
        )
    };
    let cases: Vec<(&str, Option<&str>, Option<String>)> = vec![
        (
            "an expired token",
            Some("device"),
            Some(hs256(secret, &json!({"sub": "d", "exp": now - 10}))),
        ),
        (
            "a token not valid yet (nbf)",
            Some("device"),
            Some(hs256(secret, &json!({"sub": "d", "nbf": now + 3600}))),
        ),
        (
            "a token signed with another secret",
            Some("device"),
            Some(hs256(b"not-the-secret", &valid_claims())),
        ),
        ("alg none", Some("device"), Some(alg_none)),
        ("tampered claims", Some("device"), Some(tampered)),
        ("not a JWT", Some("device"), Some("not-a-jwt".into())),
        ("an empty username", Some(""), Some(good.clone())),
        ("no password", Some("device"), None),
    ];
    for (what, username, password) in &cases {
        let mut connect = Connect::v311(&unique_id("bad"));
        let mut connect5 = packets5::Connect::new(&unique_id("bad5"));
        if let Some(username) = username {
            connect = connect.username(username);
            connect5 = connect5.username(username);
        }
        if let Some(password) = password {
            connect = connect.password(password.as_bytes());
            connect5 = connect5.password(password.as_bytes());
        }
        assert_refused_v3(addr, &connect, 0x05, what).await;
        assert_refused_v5(addr, &connect5, 0x86, what).await;
    }
    assert_eq!(
        broker.metric(BAD_CREDENTIALS).await,
        (2 * cases.len()) as f64,
        "every refusal counted as bad credentials"
    );
    assert_eq!(
        broker
            .metric("coolpy7_auth_failures_total{reason=\"not_authorized\"}")
            .await,
        0.0
    );
    // The good token was only refused for its empty username.
    assert_eq!(connack_code_v3(addr, &v3("good", &good)).await, 0);
    broker
        .wait_log_line(&["authentication failed", "expired"], TIMEOUT)
        .await;

    let logs = broker.logs();
    assert!(!logs.contains(SECRET), "the secret is in the log:\n{logs}");
    assert!(
        !logs.contains(signature(&good)),
        "a token is in the log:\n{logs}"
    );
}

/// A CONNECT that fails authentication must not take over the client id it names: the
/// connection holding it stays, and so does its session.
#[tokio::test]
async fn a_refused_connect_does_not_take_over_the_client_id() {
    let broker = start(&[]);
    let addr = broker.mqtt_addr();
    let good = hs256(SECRET.as_bytes(), &valid_claims());
    let forged = hs256(b"guessed", &valid_claims());
    let (mut holder5, _) = RawClient5::connect_v5(addr, &v5("shared-5", &good)).await;
    let (mut holder3, _) = RawClient::handshake(addr, &v3("shared-3", &good)).await;
    assert_eq!(holder3.subscribe(1, &[("inbox/3", 1)]).await, vec![1]);

    assert_refused_v5(addr, &v5("shared-5", &forged), 0x86, "a takeover").await;
    assert_refused_v3(addr, &v3("shared-3", &forged), 0x05, "a takeover").await;
    // Nothing (no DISCONNECT 0x8E) reached the holders, and they still work.
    holder5.expect_no_packet(QUIET).await;
    holder5.ping().await;
    let (mut sender, _) = RawClient::handshake(addr, &v3("sender", &good)).await;
    sender.publish_qos1("inbox/3", 1, b"still yours").await;
    assert_eq!(holder3.recv_publish(TIMEOUT).await.payload, b"still yours");
    assert_eq!(broker.metric("coolpy7_connections").await, 3.0);
}

/// HMAC keyed with the bytes of the public key (which everyone has) must not pass for a
/// signature by its private half (RFC 8725 §2.1).
#[tokio::test]
async fn hs256_keyed_with_the_public_key_pem_is_refused_by_jpk() {
    let (broker, _dir) = start_with_public_key(RSA_PUBLIC_PEM);
    let addr = broker.mqtt_addr();
    // The key works: OpenSSL's RS256 token is accepted.
    assert_eq!(connack_code_v3(addr, &v3("rs256", RS256_TOKEN)).await, 0);
    assert_eq!(connack_code_v5(addr, &v5("rs256-5", RS256_TOKEN)).await, 0);

    let claims = json!({"sub": "device-1", "exp": now_secs() + 3600});
    for (what, key) in [
        ("the PEM file's bytes", RSA_PUBLIC_PEM),
        (
            "the PEM without its last line end",
            RSA_PUBLIC_PEM.trim_end(),
        ),
    ] {
        for alg in ["HS256", "HS512"] {
            let forged = hmac_token(alg, key.as_bytes(), &claims);
            let what = format!("{alg} keyed with {what}");
            assert_refused_v3(addr, &v3(&unique_id("forged"), &forged), 0x05, &what).await;
            assert_refused_v5(addr, &v5(&unique_id("forged"), &forged), 0x86, &what).await;
        }
    }
    assert_eq!(broker.metric(BAD_CREDENTIALS).await, 8.0);
}

#[tokio::test]
async fn es256_and_eddsa_public_keys_accept_their_tokens_and_refuse_rs256() {
    let rng = ring::rand::SystemRandom::new();
    let claims = json!({"sub": "device", "exp": now_secs() + 3600});

    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &p256.serialize_der(),
        &rng,
    )
    .expect("P-256 signer");
    let es256 = token(&json!({"alg": "ES256", "typ": "JWT"}), &claims, |input| {
        signer.sign(&rng, input).expect("sign").as_ref().to_vec()
    });

    let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
    let signer = ring::signature::Ed25519KeyPair::from_pkcs8(&ed25519.serialize_der())
        .expect("Ed25519 signer");
    let eddsa = token(&json!({"alg": "EdDSA", "typ": "JWT"}), &claims, |input| {
        signer.sign(input).as_ref().to_vec()
    });

    let (broker, _dir) = start_with_public_key(&p256.public_key_pem());
    let addr = broker.mqtt_addr();
    assert_eq!(connack_code_v3(addr, &v3("es256", &es256)).await, 0);
    assert_eq!(connack_code_v5(addr, &v5("es256-5", &es256)).await, 0);
    for (what, refused) in [("RS256", RS256_TOKEN), ("EdDSA", &eddsa)] {
        assert_refused_v3(addr, &v3(&unique_id("x"), refused), 0x05, what).await;
        assert_refused_v5(addr, &v5(&unique_id("x"), refused), 0x86, what).await;
    }
    // Signed by another P-256 key.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    let other = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &other.serialize_der(),
        &rng,
    )
    .expect("P-256 signer");
    let foreign = token(&json!({"alg": "ES256"}), &claims, |input| {
        other.sign(&rng, input).expect("sign").as_ref().to_vec()
    });
    assert_refused_v3(addr, &v3("foreign", &foreign), 0x05, "another P-256 key").await;
    assert_eq!(broker.metric(BAD_CREDENTIALS).await, 5.0);
    drop(broker);

    let (broker, _dir) = start_with_public_key(&ed25519.public_key_pem());
    let addr = broker.mqtt_addr();
    assert_eq!(connack_code_v3(addr, &v3("eddsa", &eddsa)).await, 0);
    assert_eq!(connack_code_v5(addr, &v5("eddsa-5", &eddsa)).await, 0);
    for (what, refused) in [("RS256", RS256_TOKEN), ("ES256", &es256)] {
        assert_refused_v3(addr, &v3(&unique_id("x"), refused), 0x05, what).await;
        assert_refused_v5(addr, &v5(&unique_id("x"), refused), 0x86, what).await;
    }
}

/// The wall-clock time `seconds` after 1970.
fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

/// How long until `when` (zero when it has passed).
fn until(when: SystemTime) -> Duration {
    when.duration_since(SystemTime::now()).unwrap_or_default()
}

#[tokio::test]
async fn a_token_that_expires_closes_its_connection_with_0x87_in_5_and_silently_in_3_1_1() {
    let broker = start(&[]);
    let addr = broker.mqtt_addr();
    let exp = now_secs() + 3;
    let expiring = hs256(SECRET.as_bytes(), &json!({"sub": "d", "exp": exp}));
    let lasting = hs256(SECRET.as_bytes(), &valid_claims());
    let (mut c5, _) = RawClient5::connect_v5(addr, &v5("expiring-5", &expiring)).await;
    let (mut c3, _) = RawClient::handshake(addr, &v3("expiring-3", &expiring)).await;
    let (mut other, _) = RawClient::handshake(addr, &v3("lasting", &lasting)).await;

    // Open until just before exp...
    let expiry = at(exp);
    c5.assert_open_for(until(expiry - Duration::from_millis(400)))
        .await;
    c3.ping().await;
    // ...and closed soon after it.
    let (reason, before) = c5.expect_disconnect_after(until(expiry) + TIMEOUT).await;
    let closed_at = SystemTime::now();
    assert_eq!(reason.code, 0x87, "DISCONNECT reason: {reason:?}");
    assert!(before.is_empty(), "{before:?}");
    let after3 = c3.expect_closed(TIMEOUT).await;
    assert!(
        after3.is_empty(),
        "3.1.1 has no DISCONNECT from the server: {after3:?}"
    );
    assert!(
        closed_at + Duration::from_millis(100) >= expiry,
        "closed {:?} before exp",
        expiry.duration_since(closed_at).unwrap_or_default()
    );
    assert!(
        closed_at <= expiry + Duration::from_secs(2),
        "closed {:?} after exp",
        closed_at.duration_since(expiry).unwrap_or_default()
    );
    broker
        .wait_log_line(&["expiring-3", "credentials expired"], TIMEOUT)
        .await;
    // A client whose token lasts is not touched.
    other.ping().await;
    // The same token cannot come back.
    assert_refused_v3(addr, &v3("expiring-3", &expiring), 0x05, "after exp").await;
}

/// The PUBLISHes `client` receives until the line goes quiet (acknowledged), as topics.
async fn received_topics(client: &mut RawClient) -> Vec<String> {
    let mut topics = Vec::new();
    loop {
        match client.try_recv(QUIET).await {
            Ok(Packet::Publish(publish)) => {
                if publish.qos > 0 {
                    client.send(&packets::puback(publish.pkid)).await;
                }
                topics.push(publish.topic);
            }
            Ok(other) => panic!("expected a PUBLISH, got {other:?}"),
            Err(_) => return topics,
        }
    }
}

#[tokio::test]
async fn the_acl_claim_gives_the_client_exactly_its_rights() {
    let broker = start(&[]);
    let addr = broker.mqtt_addr();
    let limited = hs256(
        SECRET.as_bytes(),
        &json!({"sub": "d", "exp": now_secs() + 3600,
                "acl": {"pub": ["up/%c"], "sub": ["down/#"]}}),
    );
    // Without an acl claim and without -acl, a client may do anything.
    let free = hs256(SECRET.as_bytes(), &valid_claims());
    let (mut watcher, _) = RawClient::handshake(addr, &v3("watcher", &free)).await;
    assert_eq!(watcher.subscribe(1, &[("#", 1)]).await, vec![1]);

    let (mut dev, _) = RawClient::handshake(addr, &v3("dev-1", &limited)).await;
    assert_eq!(
        dev.subscribe(1, &[("down/#", 1), ("up/#", 1), ("#", 1), ("other/x", 0)])
            .await,
        vec![1, 0x80, 0x80, 0x80]
    );
    dev.publish_qos1("up/dev-1", 2, b"mine").await;
    // Acknowledged and dropped.
    dev.publish_qos1("up/dev-2", 3, b"not mine").await;
    dev.publish_qos1("other/x", 4, b"elsewhere").await;
    dev.publish_qos0("down/x", b"read-only").await;

    let (mut dev5, _) = RawClient5::connect_v5(addr, &v5("dev-5", &limited)).await;
    let suback = dev5
        .subscribe(
            &SubscribePacket::new(1)
                .filter("down/#", 1)
                .filter("up/dev-5", 1),
        )
        .await;
    assert_eq!(suback.codes, vec![1, 0x87]);
    let ack = dev5
        .publish(&PublishPacket::new("other/y", 1, 2, b"x"))
        .await
        .expect("PUBACK");
    assert_eq!(ack.code, 0x87, "{ack:?}");
    dev5.publish_qos1("up/dev-5", 3, b"mine").await;

    assert_eq!(
        received_topics(&mut watcher).await,
        vec!["up/dev-1", "up/dev-5"]
    );
    // What it may read arrives.
    watcher.publish_qos1("down/news", 9, b"for devices").await;
    assert_eq!(dev.recv_publish(TIMEOUT).await.topic, "down/news");
    assert_eq!(dev5.recv_publish(TIMEOUT).await.topic, "down/news");
    assert_eq!(
        broker
            .metric("coolpy7_authorization_denied_total{action=\"publish\"}")
            .await,
        4.0
    );
}

/// A token's rules replace the rules file for its client: what the file denies everyone, the
/// claim may allow; a token without the claim gets the file's rules.
#[tokio::test]
async fn the_acl_claim_replaces_the_rules_file_for_its_client() {
    let dir = TempDir::new("jwt-acl-file");
    let rules = dir.write("rules.acl", b"deny all #\n");
    let broker = start(&["-acl", rules.to_str().expect("utf-8 path")]);
    let addr = broker.mqtt_addr();
    let reader = hs256(SECRET.as_bytes(), &json!({"acl": {"sub": ["#"]}}));
    let writer = hs256(SECRET.as_bytes(), &json!({"acl": {"pub": ["up/%c"]}}));
    let plain = hs256(SECRET.as_bytes(), &valid_claims());

    let (mut watcher, _) = RawClient::handshake(addr, &v3("watcher", &reader)).await;
    assert_eq!(watcher.subscribe(1, &[("#", 1)]).await, vec![1]);
    let (mut plain, _) = RawClient::handshake(addr, &v3("plain", &plain)).await;
    assert_eq!(plain.subscribe(1, &[("#", 1)]).await, vec![0x80]);
    plain
        .publish_qos1("up/plain", 2, b"denied by the file")
        .await;
    let (mut writer, _) = RawClient::handshake(addr, &v3("w-1", &writer)).await;
    writer
        .publish_qos1("up/w-1", 1, b"allowed by the claim")
        .await;
    assert_eq!(received_topics(&mut watcher).await, vec!["up/w-1"]);
}

/// Replaces `path` atomically with `contents`, as a Kubernetes Secret update does.
fn replace(dir: &TempDir, name: &str, contents: &str) {
    dir.write("staged", contents.as_bytes());
    std::fs::rename(dir.path().join("staged"), dir.path().join(name)).expect("rename over");
}

const RELOADED: &[&str] = &["JWT key reloaded"];

#[tokio::test]
async fn a_rewritten_secret_file_is_used_without_a_restart() {
    let dir = TempDir::new("jwt-secret");
    // With the line end an editor or `echo` adds: it is not part of the secret.
    let path = dir.write("secret", b"first-secret-9d2e\n");
    let broker = Broker::start(&[
        "-as",
        "1",
        "-jskf",
        path.to_str().expect("utf-8 path"),
        "-ari",
        "1",
    ]);
    let addr = broker.mqtt_addr();
    let first = hs256(b"first-secret-9d2e", &valid_claims());
    let second = hs256(b"second-secret-41aa", &valid_claims());
    let (mut old, _) = RawClient::handshake(addr, &v3("old", &first)).await;
    assert_eq!(connack_code_v3(addr, &v3("second", &second)).await, 0x05);

    replace(&dir, "secret", "second-secret-41aa\n");
    wait_log_count(&broker, RELOADED, 1, Duration::from_secs(5)).await;
    assert_refused_v3(addr, &v3("first", &first), 0x05, "the old secret").await;
    assert_refused_v5(addr, &v5("first5", &first), 0x86, "the old secret").await;
    assert_eq!(connack_code_v3(addr, &v3("second", &second)).await, 0);
    assert_eq!(connack_code_v5(addr, &v5("second5", &second)).await, 0);
    // Connections already authenticated stay.
    old.ping().await;

    // A file that does not load (empty) keeps the secret in force.
    replace(&dir, "secret", "");
    broker
        .wait_log_line(&["does not load", "keeping the previous one"], TIMEOUT)
        .await;
    assert_eq!(connack_code_v3(addr, &v3("second", &second)).await, 0);

    let logs = broker.logs();
    for secret in ["first-secret-9d2e", "second-secret-41aa"] {
        assert!(!logs.contains(secret), "{secret} is in the log:\n{logs}");
    }
}

#[tokio::test]
async fn sighup_reloads_the_secret_file_at_once() {
    let dir = TempDir::new("jwt-secret-hup");
    let path = dir.write("secret", b"before-hup-c81d");
    // A long interval: the reload must be SIGHUP's doing.
    let broker = Broker::start(&[
        "-as",
        "1",
        "-jskf",
        path.to_str().expect("utf-8 path"),
        "-ari",
        "3600",
    ]);
    let addr = broker.mqtt_addr();
    let before = hs256(b"before-hup-c81d", &valid_claims());
    let after = hs256(b"after-hup-77f0", &valid_claims());
    assert_eq!(connack_code_v3(addr, &v3("before", &before)).await, 0);

    replace(&dir, "secret", "after-hup-77f0");
    // Not picked up by itself...
    tokio::time::sleep(QUIET).await;
    assert_eq!(count_log_lines(&broker, RELOADED), 0);
    assert_eq!(connack_code_v3(addr, &v3("after", &after)).await, 0x05);
    // ...but at SIGHUP.
    broker.signal("HUP");
    broker
        .wait_log_line(&["JWT key reloaded", "SIGHUP"], TIMEOUT)
        .await;
    assert_eq!(connack_code_v3(addr, &v3("after", &after)).await, 0);
    assert_eq!(connack_code_v3(addr, &v3("before", &before)).await, 0x05);
    let logs = broker.logs();
    assert!(!logs.contains("before-hup-c81d") && !logs.contains("after-hup-77f0"));
}

/// `ClientAcl::validate`'s doc: "Credentials whose rules do not parse are refused as a whole:
/// a typo would otherwise silently deny (or, worse, widen) what the issuer meant". A misspelt
/// list name (`publish` for `pub`), or an `acl` that is a JSON array, still parses (serde
/// ignores unknown fields and takes a struct from a sequence): the client is let in with no
/// rights at all.
#[tokio::test]
async fn an_acl_claim_with_an_unknown_list_or_of_the_wrong_shape_is_refused() {
    let broker = Broker::start(&["-as", "1", "-jsk", "s3cret"]);
    for acl in [json!({"publish": ["t/#"]}), json!([["t/#"]]), json!([])] {
        let token = hs256(b"s3cret", &json!({"acl": acl}));
        let connect = Connect::v311("typo")
            .username("u")
            .password(token.as_bytes());
        assert_eq!(
            connack_code_v3(broker.mqtt_addr(), &connect).await,
            0x05,
            "acl {acl}"
        );
    }
}
