//! A verified client certificate as the client's credentials, through the real binary: with
//! TLS client certificates required (`-tv required`) and named by their CN (`-tcn cn`), a
//! password file (`-as 3 -pwf`) that does not list the device, and the rules
//! `allow all devices/%u/#` with default deny, a device presenting a certificate for
//! `device-1` connects without a password and may use `devices/device-1/` only, whatever
//! username its CONNECT claims; the same username without the certificate (plain TCP) is
//! refused. A subscriber authenticated by password watches what gets through.
//!
//! The TLS client is tokio-rustls and the certificates come from a test CA made with rcgen
//! ([`coolpy7_tests::transport`]).

use coolpy7_tests::auth::{assert_refused_v3, connack_code_v3};
use coolpy7_tests::packets5::{self, PublishPacket};
use coolpy7_tests::raw::{RawClient5, V3};
use coolpy7_tests::transport::{boxed, client_config, try_connect_tls, TempDir, TestCa, TlsFiles};
use coolpy7_tests::{packets, Broker, Connect, Packet, RawClient, QUIET, TIMEOUT};

/// Made by `mosquitto_passwd -b -c FILE alice 'correct horse'` (Mosquitto 2.0.11): the
/// watcher's password. The file has no line for the devices.
const ALICE: &str = "alice:$7$101$RU9JcjmTSD/BW0BH$Yauq7ivTMzP/Xiuvl16R3XeaCYzfUE1MS4VBZ87q4nGng87qadpoNtYHFlWdzpl+GM0YXGgzla4OZJZ17cYaKg==";

const RULES: &str = "\
allow all devices/%u/#
allow subscribe devices/# user alice
";

struct Setup {
    broker: Broker,
    ca: TestCa,
    _tls: TlsFiles,
    _dir: TempDir,
}

fn start() -> Setup {
    let ca = TestCa::new("devices CA");
    let tls = TlsFiles::write(&ca.server("broker"), &ca);
    let dir = TempDir::new("cert-auth");
    let passwords = dir.write("passwords", format!("{ALICE}\n").as_bytes());
    let rules = dir.write("rules.acl", RULES.as_bytes());
    let mut args = vec![
        "-tl=127.0.0.1:0".to_string(),
        format!("-tca={}", tls.client_ca.display()),
        "-tv=required".into(),
        "-tcn=cn".into(),
        "-as=3".into(),
        format!("-pwf={}", passwords.display()),
        format!("-acl={}", rules.display()),
        "-acld=deny".into(),
    ];
    args.extend(tls.server_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Setup {
        broker: Broker::start(&args),
        ca,
        _tls: tls,
        _dir: dir,
    }
}

/// A TLS connection presenting a certificate whose CN is `cn`.
async fn tls_as(setup: &Setup, cn: &str) -> Box<dyn coolpy7_tests::raw::ClientStream> {
    let addr = setup.broker.listener_addr("tls");
    let identity = setup.ca.client(cn, &format!("{cn}.example"));
    let stream = try_connect_tls(addr, client_config(&setup.ca, Some(&identity), &[]))
        .await
        .expect("TLS handshake with a client certificate");
    boxed(stream)
}

/// The topics of the PUBLISHes that arrive until the line goes quiet (acknowledged).
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
async fn a_verified_certificate_authenticates_the_device_and_names_it_for_the_rules() {
    let setup = start();
    let broker = &setup.broker;
    let tcp = broker.mqtt_addr();
    let tls = broker.listener_addr("tls");

    let alice = Connect::v311("watcher")
        .username("alice")
        .password(b"correct horse");
    let (mut watcher, _) = RawClient::handshake(tcp, &alice).await;
    assert_eq!(watcher.subscribe(1, &[("devices/#", 1)]).await, vec![1]);

    // No username, no password: the certificate is the credential.
    let mut device = RawClient::<V3>::over(tls_as(&setup, "device-1").await, tls);
    device.send(&Connect::v311("dev-1").encode()).await;
    assert!(matches!(
        device.recv(TIMEOUT).await,
        Packet::ConnAck { code: 0, .. }
    ));
    device.publish_qos1("devices/device-1/temp", 1, b"21").await;
    device
        .publish_qos1("devices/device-2/temp", 2, b"forged")
        .await;
    device.publish_qos1("elsewhere", 3, b"x").await;
    assert_eq!(
        device
            .subscribe(4, &[("devices/device-1/cmd", 1), ("devices/device-2/#", 1)])
            .await,
        vec![1, 0x80]
    );
    assert_eq!(
        received_topics(&mut watcher).await,
        vec!["devices/device-1/temp"]
    );

    // The username a CONNECT claims is not believed over the certificate's, and no password
    // is checked for it.
    let mut claiming = RawClient5::over(tls_as(&setup, "device-1").await, tls);
    let connect = packets5::Connect::new("dev-1-claims")
        .username("device-2")
        .password(b"wrong");
    claiming.send(&connect.encode()).await;
    match claiming.recv(TIMEOUT).await {
        packets5::Packet::ConnAck(connack) => assert_eq!(connack.code, 0, "{connack:?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let ack = claiming
        .publish(&PublishPacket::new(
            "devices/device-2/temp",
            1,
            1,
            b"forged",
        ))
        .await
        .expect("PUBACK");
    assert_eq!(ack.code, 0x87, "{ack:?}");
    claiming
        .publish_qos1("devices/device-1/hum", 2, b"40")
        .await;
    assert_eq!(
        received_topics(&mut watcher).await,
        vec!["devices/device-1/hum"]
    );
    broker
        .wait_log_line(
            &[
                "client connected",
                "dev-1-claims",
                "username=Some(\"device-1\")",
            ],
            TIMEOUT,
        )
        .await;

    // Without the certificate, the device's name alone is refused.
    let bare = Connect::v311("dev-1-tcp").username("device-1");
    assert_refused_v3(tcp, &bare, 0x05, "a device name without certificate").await;
    let guessed = Connect::v311("dev-1-tcp")
        .username("device-1")
        .password(b"correct horse");
    assert_eq!(connack_code_v3(tcp, &guessed).await, 0x05);
    assert_eq!(
        broker
            .metric("coolpy7_auth_failures_total{reason=\"bad_credentials\"}")
            .await,
        2.0
    );
    assert_eq!(
        broker
            .metric("coolpy7_authorization_denied_total{action=\"publish\"}")
            .await,
        3.0
    );
}
