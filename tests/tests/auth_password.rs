//! Password-file authentication (`-as 3 -pwf FILE`) through the real binary: a file made by
//! the real `coolpy7 passwd` (password from standard input and from `-b`) lets its users in
//! (CONNACK 0) and refuses a wrong password, an unknown user, no password and no username
//! (0x05 in 3.1.1, 0x86 in MQTT 5, counted as bad credentials); a line written by Mosquitto's
//! `mosquitto_passwd` (`$7$`) works as is; and a file changed while the broker runs (`-ari`)
//! adds and removes users for new CONNECTs without a restart, connections already in staying.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coolpy7_tests::auth::{
    assert_refused_v3, assert_refused_v5, connack_code_v3, connack_code_v5, wait_log_count,
};
use coolpy7_tests::broker::binary_path;
use coolpy7_tests::packets5;
use coolpy7_tests::transport::TempDir;
use coolpy7_tests::{Broker, Connect, RawClient, TIMEOUT};

const BAD_CREDENTIALS: &str = "coolpy7_auth_failures_total{reason=\"bad_credentials\"}";

/// Made by `mosquitto_passwd -b -c FILE alice 'correct horse'` (Mosquitto 2.0.11), as in the
/// broker's unit tests of `auth::password_file`.
const MOSQUITTO_7_LINE: &str = "alice:$7$101$RU9JcjmTSD/BW0BH$Yauq7ivTMzP/Xiuvl16R3XeaCYzfUE1MS4VBZ87q4nGng87qadpoNtYHFlWdzpl+GM0YXGgzla4OZJZ17cYaKg==";

/// Runs `coolpy7 passwd <args>` with `stdin` as its standard input and asserts it exits 0
/// within 30 s (argon2id is optimised even in the debug binary).
fn passwd(args: &[&str], stdin: &[u8]) {
    let mut child = Command::new(binary_path())
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start coolpy7 passwd");
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin).expect("write the password");
    drop(input);
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("coolpy7 passwd {args:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("coolpy7 passwd output");
    assert!(
        output.status.success(),
        "coolpy7 passwd {args:?}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn start(file: &Path, extra: &[&str]) -> Broker {
    let mut args = vec!["-as", "3", "-pwf", file.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    Broker::start(&args)
}

fn v3(client_id: &str, user: &str, password: &str) -> Connect {
    Connect::v311(client_id)
        .username(user)
        .password(password.as_bytes())
}

fn v5(client_id: &str, user: &str, password: &str) -> packets5::Connect {
    packets5::Connect::new(client_id)
        .username(user)
        .password(password.as_bytes())
}

#[tokio::test]
async fn users_made_by_coolpy7_passwd_connect_and_others_are_refused() {
    let dir = TempDir::new("pwf");
    let file = dir.path().join("passwords");
    let file_arg = file.to_str().expect("utf-8 path");
    passwd(&["-c", file_arg, "alice"], b"alice pw 1\n");
    passwd(&["-b", "bob-pw-2", file_arg, "bob"], b"");
    let broker = start(&file, &[]);
    let addr = broker.mqtt_addr();

    assert_eq!(
        connack_code_v3(addr, &v3("a3", "alice", "alice pw 1")).await,
        0
    );
    assert_eq!(
        connack_code_v5(addr, &v5("a5", "alice", "alice pw 1")).await,
        0
    );
    assert_eq!(connack_code_v3(addr, &v3("b3", "bob", "bob-pw-2")).await, 0);
    // Again, from the cache of recent successes.
    assert_eq!(
        connack_code_v3(addr, &v3("a3", "alice", "alice pw 1")).await,
        0
    );

    let refused: [(&str, Option<&str>, Option<&str>); 7] = [
        ("a wrong password", Some("alice"), Some("alice pw 2")),
        ("another user's password", Some("alice"), Some("bob-pw-2")),
        (
            "the line end stdin had",
            Some("alice"),
            Some("alice pw 1\n"),
        ),
        ("an unknown user", Some("carol"), Some("alice pw 1")),
        ("no password", Some("alice"), None),
        ("an empty username", Some(""), Some("alice pw 1")),
        ("an empty password", Some("bob"), Some("")),
    ];
    for (what, user, password) in refused {
        let mut connect = Connect::v311("refused");
        let mut connect5 = packets5::Connect::new("refused5");
        if let Some(user) = user {
            connect = connect.username(user);
            connect5 = connect5.username(user);
        }
        if let Some(password) = password {
            connect = connect.password(password.as_bytes());
            connect5 = connect5.password(password.as_bytes());
        }
        assert_refused_v3(addr, &connect, 0x05, what).await;
        assert_refused_v5(addr, &connect5, 0x86, what).await;
    }
    // MQTT 5 allows a password without a username; it names nobody.
    let anonymous = packets5::Connect::new("anon").password(b"alice pw 1");
    assert_refused_v5(addr, &anonymous, 0x86, "no username").await;
    assert_eq!(broker.metric(BAD_CREDENTIALS).await, 15.0);

    let logs = broker.logs();
    for secret in ["alice pw 1", "bob-pw-2"] {
        assert!(!logs.contains(secret), "{secret:?} is in the log:\n{logs}");
    }
}

#[tokio::test]
async fn a_mosquitto_7_line_works_as_is() {
    let dir = TempDir::new("pwf-mosquitto");
    let file = dir.write(
        "passwords",
        format!("# migrated from Mosquitto\n{MOSQUITTO_7_LINE}\n").as_bytes(),
    );
    let broker = start(&file, &[]);
    let addr = broker.mqtt_addr();
    assert_eq!(
        connack_code_v3(addr, &v3("m3", "alice", "correct horse")).await,
        0
    );
    assert_eq!(
        connack_code_v5(addr, &v5("m5", "alice", "correct horse")).await,
        0
    );
    for wrong in ["Correct horse", "correct horse ", "correct"] {
        assert_refused_v3(addr, &v3("w3", "alice", wrong), 0x05, wrong).await;
        assert_refused_v5(addr, &v5("w5", "alice", wrong), 0x86, wrong).await;
    }
}

const RELOADED: &[&str] = &["password file reloaded"];

#[tokio::test]
async fn a_changed_file_adds_and_removes_users_without_a_restart_and_keeps_connections() {
    let dir = TempDir::new("pwf-reload");
    let file = dir.path().join("passwords");
    let file_arg = file.to_str().expect("utf-8 path");
    passwd(&["-b", "alice-pw", "-c", file_arg, "alice"], b"");
    let broker = start(&file, &["-ari", "1"]);
    let addr = broker.mqtt_addr();

    let (mut alice, _) = RawClient::handshake(addr, &v3("alice", "alice", "alice-pw")).await;
    assert_eq!(alice.subscribe(1, &[("news/#", 1)]).await, vec![1]);
    assert_eq!(
        connack_code_v3(addr, &v3("bob", "bob", "bob-pw")).await,
        0x05
    );

    passwd(&["-b", "bob-pw", file_arg, "bob"], b"");
    wait_log_count(&broker, RELOADED, 1, Duration::from_secs(5)).await;
    let (mut bob, _) = RawClient::handshake(addr, &v3("bob", "bob", "bob-pw")).await;

    // alice is removed: she cannot come back, but her connection stays and works.
    passwd(&["-D", file_arg, "alice"], b"");
    wait_log_count(&broker, RELOADED, 2, Duration::from_secs(5)).await;
    assert_refused_v3(
        addr,
        &v3("alice-again", "alice", "alice-pw"),
        0x05,
        "a removed user",
    )
    .await;
    assert_refused_v5(
        addr,
        &v5("alice-again5", "alice", "alice-pw"),
        0x86,
        "a removed user",
    )
    .await;
    alice.ping().await;
    bob.publish_qos1("news/today", 1, b"hello").await;
    let got = alice.recv_publish(TIMEOUT).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("news/today", &b"hello"[..])
    );

    // A file that no longer parses keeps the users in force.
    dir.write("passwords", b"this line has no colon\n");
    broker
        .wait_log_line(&["does not load", "keeping the previous one"], TIMEOUT)
        .await;
    assert_eq!(connack_code_v3(addr, &v3("bob2", "bob", "bob-pw")).await, 0);
}
