//! The data directory (`-dd`) through the real binary: a broker killed with SIGKILL under QoS 1
//! load comes back with every message it acknowledged for its persistent sessions (offline
//! ones, and online ones whose client had not received it yet) and with its retained messages;
//! with either write policy (`-dfs 0`, `-dfs 200`). A damaged data directory is reported
//! clearly, never a panic.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coolpy7_tests::{unique_id, Broker, QoS, TestClient};

/// A fresh directory under the system's temporary one, removed when dropped.
struct DataDir(PathBuf);

impl DataDir {
    fn new() -> DataDir {
        let dir = std::env::temp_dir().join(format!("coolpy7-dd-{}", unique_id("t")));
        DataDir(dir)
    }

    fn arg(&self) -> String {
        format!("-dd={}", self.0.display())
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const OFFLINE: usize = 8;
const ONLINE: usize = 2;
const PUBLISHERS: usize = 3;
/// Acknowledged messages (all publishers together) after which the broker is killed.
const KILL_AFTER: usize = 300;

fn persistent(broker: &Broker, id: &str) -> rumqttc::MqttOptions {
    let mut options = broker.options(id);
    options.set_clean_session(false);
    options
}

async fn killed_under_load_loses_nothing_acknowledged(policy: &str) {
    let dir = DataDir::new();
    let args = [dir.arg(), policy.to_string()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut broker = Broker::start(&args);
    let topic = format!("durable/{}", unique_id("topic"));

    let offline_ids: Vec<String> = (0..OFFLINE)
        .map(|i| unique_id(&format!("off{i}")))
        .collect();
    for id in &offline_ids {
        let mut client = TestClient::connect(persistent(&broker, id)).await;
        client.subscribe_ok(&topic, QoS::AtLeastOnce).await;
        client.disconnect().await;
    }
    let online_ids: Vec<String> = (0..ONLINE).map(|i| unique_id(&format!("on{i}"))).collect();
    let mut online = Vec::new();
    for id in &online_ids {
        let mut client = TestClient::connect(persistent(&broker, id)).await;
        client.subscribe_ok(&topic, QoS::AtLeastOnce).await;
        online.push(client);
    }
    // Retained messages, QoS 1 (acknowledged) and one cleared again.
    let mut setter = broker.client(&unique_id("retainer")).await;
    let retained_topics: Vec<String> = (0..5).map(|i| format!("{topic}/retained/{i}")).collect();
    for (i, t) in retained_topics.iter().enumerate() {
        setter
            .publish(t, QoS::AtLeastOnce, true, format!("kept {i}"))
            .await;
    }
    let cleared = format!("{topic}/retained/cleared");
    setter.publish(&cleared, QoS::AtLeastOnce, true, "x").await;
    setter.publish(&cleared, QoS::AtLeastOnce, true, "").await;

    // Publishers, each sending its numbered messages one after the other (each PUBACK awaited)
    // and counting the acknowledged ones.
    let acked: Vec<Arc<AtomicUsize>> = (0..PUBLISHERS)
        .map(|_| Arc::new(AtomicUsize::new(0)))
        .collect();
    let mut tasks = Vec::new();
    for (p, count) in acked.iter().enumerate() {
        let mut publisher = broker.client(&unique_id(&format!("pub{p}"))).await;
        let count = count.clone();
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100_000usize {
                publisher
                    .publish(&topic, QoS::AtLeastOnce, false, format!("{p}-{i}"))
                    .await;
                count.store(i + 1, Ordering::SeqCst);
            }
        }));
    }
    let total = || {
        acked
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .sum::<usize>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while total() < KILL_AFTER {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} messages acknowledged within 60 s",
            total()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    broker.signal("KILL");
    broker.wait_exit(Duration::from_secs(10)).await;
    // Read once the broker is gone: nothing is acknowledged after that.
    let acknowledged: Vec<usize> = acked.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    for task in tasks {
        task.abort();
        let _ = task.await;
    }
    let expected: HashSet<String> = acknowledged
        .iter()
        .enumerate()
        .flat_map(|(p, n)| (0..*n).map(move |i| format!("{p}-{i}")))
        .collect();
    // What the online subscribers got before the kill (their client acknowledged it).
    let mut before: Vec<HashSet<String>> = Vec::new();
    for mut client in online {
        let mut got = HashSet::new();
        while let Some(publish) = client.try_recv_publish() {
            got.insert(String::from_utf8_lossy(&publish.payload).into_owned());
        }
        before.push(got);
    }

    let broker = Broker::start(&args);
    let log = broker
        .wait_log_line(&["data directory read back"], Duration::from_secs(10))
        .await;
    println!("{policy}: acknowledged {acknowledged:?}; {log}");
    let ids = offline_ids.iter().chain(&online_ids);
    for (n, id) in ids.enumerate() {
        let mut client = TestClient::connect(persistent(&broker, id)).await;
        assert!(client.session_present(), "{id}: the session came back");
        let mut got: HashSet<String> = before
            .get(n.wrapping_sub(OFFLINE))
            .cloned()
            .unwrap_or_default();
        let quiet = Duration::from_millis(1_500);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !expected.is_subset(&got) && tokio::time::Instant::now() < deadline {
            for publish in client.drain_publishes(quiet).await {
                got.insert(String::from_utf8_lossy(&publish.payload).into_owned());
            }
            if client.is_closed() {
                break;
            }
        }
        let missing: Vec<&String> = expected.difference(&got).take(10).collect();
        assert!(
            missing.is_empty(),
            "{policy}: {id} lost {} acknowledged messages, e.g. {missing:?}",
            expected.difference(&got).count()
        );
        client.disconnect().await;
    }
    // The retained messages, and not the one cleared.
    let mut reader = broker.client(&unique_id("reader")).await;
    reader
        .subscribe_ok(&format!("{topic}/retained/#"), QoS::AtLeastOnce)
        .await;
    let got = reader
        .recv_publishes(retained_topics.len(), Duration::from_secs(10))
        .await;
    let mut topics: Vec<String> = got.iter().map(|p| p.topic.clone()).collect();
    topics.sort();
    assert_eq!(
        topics, retained_topics,
        "{policy}: every retained message is back"
    );
    reader.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_killed_broker_keeps_what_it_acknowledged_with_an_fsync_per_acknowledgement() {
    killed_under_load_loses_nothing_acknowledged("-dfs=0").await;
}

#[tokio::test]
async fn a_killed_broker_keeps_what_it_acknowledged_with_periodic_fsyncs() {
    killed_under_load_loses_nothing_acknowledged("-dfs=200").await;
}

/// How a data directory is damaged between two runs.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Garbage over the format version, the keyspaces' manifests and their tables.
    Garbage,
    /// Garbage in the middle of the journal (as a torn or bit-rotted write leaves it).
    Journal,
}

fn damage(dir: &std::path::Path, how: Damage) {
    fn files(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir)
            .expect("read the data directory")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                files(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut all = Vec::new();
    files(dir, &mut all);
    let mut damaged = 0;
    for path in all {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let hit = match how {
            Damage::Garbage => name != "lock" && !name.ends_with(".jnl"),
            Damage::Journal => name.ends_with(".jnl"),
        };
        if !hit {
            continue;
        }
        let mut bytes = std::fs::read(&path).expect("read a data file");
        let (from, to) = match how {
            Damage::Garbage => (0, bytes.len()),
            Damage::Journal => (bytes.len().min(200), bytes.len().min(400)),
        };
        for (i, byte) in bytes[from..to].iter_mut().enumerate() {
            *byte = (i as u8).wrapping_mul(151).wrapping_add(7);
        }
        std::fs::write(&path, bytes).expect("write a data file");
        damaged += 1;
    }
    assert!(
        damaged > 0,
        "{how:?}: nothing to damage in {}",
        dir.display()
    );
}

async fn a_damaged_data_directory_is_reported_not_a_crash(how: Damage) {
    let dir = DataDir::new();
    let args = [dir.arg()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut broker = Broker::start(&args);
    let topic = format!("damaged/{}", unique_id("t"));
    let id = unique_id("sleeper");
    let mut client = TestClient::connect(persistent(&broker, &id)).await;
    client.subscribe_ok(&topic, QoS::AtLeastOnce).await;
    client.disconnect().await;
    let mut publisher = broker.client(&unique_id("pub")).await;
    for i in 0..50 {
        publisher
            .publish(&topic, QoS::AtLeastOnce, i % 10 == 0, format!("m{i}"))
            .await;
    }
    broker.sigterm();
    assert!(broker.wait_exit(Duration::from_secs(40)).await.is_some());
    damage(&dir.0, how);

    let mut child = std::process::Command::new(coolpy7_tests::broker::binary_path())
        .args([
            "-l",
            "127.0.0.1:0",
            "-hl",
            "nil",
            "--log-level",
            "info,lsm_tree=warn,fjall=warn",
            &dir.arg(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start coolpy7");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if status.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("coolpy7 output");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(!text.contains("panicked"), "{how:?}: a panic:\n{text}");
    match status {
        // Refused to start: with a clear message naming the directory, and not a panic's code.
        Some(status) => {
            println!("{how:?}: exited with {status}: {}", text.trim());
            assert!(
                status.code().is_some_and(|c| c != 0 && c != 101),
                "{how:?}: {status}"
            );
            assert!(
                text.contains("data directory") && text.contains(&*dir.0.to_string_lossy()),
                "{how:?}: the error names the data directory:\n{text}"
            );
        }
        // Started: it read back what it could, and said so.
        None => {
            println!("{how:?}: started anyway");
            assert!(
                text.contains("data directory read back"),
                "{how:?}: still running after 15 s without reading its data directory:\n{text}"
            );
        }
    }
}

#[tokio::test]
async fn a_data_directory_full_of_garbage_is_reported_not_a_crash() {
    a_damaged_data_directory_is_reported_not_a_crash(Damage::Garbage).await;
}

#[tokio::test]
async fn a_damaged_journal_is_reported_not_a_crash() {
    a_damaged_data_directory_is_reported_not_a_crash(Damage::Journal).await;
}

/// A session's expiry counts the time its client was away before the node stopped, across the
/// restart; one whose client was connected when the node crashed counts from the restart.
#[tokio::test]
async fn a_session_expiry_counts_the_time_before_the_restart() {
    let dir = DataDir::new();
    let args = [dir.arg(), "-se=4".to_string()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut broker = Broker::start(&args);
    let away = unique_id("away");
    let mut client = TestClient::connect(persistent(&broker, &away)).await;
    client.subscribe_ok("expiry/t", QoS::AtLeastOnce).await;
    client.disconnect().await;
    let connected = unique_id("connected");
    let mut online = TestClient::connect(persistent(&broker, &connected)).await;
    online.subscribe_ok("expiry/t", QoS::AtLeastOnce).await;
    let twice = unique_id("twice");
    let mut online_twice = TestClient::connect(persistent(&broker, &twice)).await;
    online_twice
        .subscribe_ok("expiry/t", QoS::AtLeastOnce)
        .await;
    // Killed well within its expiry (so it is still on disk), and started again after it ran
    // out.
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker.signal("KILL");
    assert!(broker.wait_exit(Duration::from_secs(10)).await.is_some());
    drop((online, online_twice));
    tokio::time::sleep(Duration::from_secs(4)).await;

    let mut broker = Broker::start(&args);
    let back = TestClient::connect(persistent(&broker, &connected)).await;
    assert!(
        back.session_present(),
        "connected at the crash: its expiry counts from the restart"
    );
    let gone = TestClient::connect(persistent(&broker, &away)).await;
    assert!(
        !gone.session_present(),
        "away for 1 s before the crash and 4 s after, of a 4 s expiry: expired"
    );
    drop((back, gone));
    // Connected at the first crash, not back since: offline from the first restart on, also
    // on disk, so a second crash does not start its expiry over. Two seconds for the rewrite
    // of its record to reach the disk, with other tests' fsyncs in the way.
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.signal("KILL");
    assert!(broker.wait_exit(Duration::from_secs(10)).await.is_some());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let broker = Broker::start(&args);
    let again = TestClient::connect(persistent(&broker, &twice)).await;
    assert!(
        !again.session_present(),
        "offline 2 s before the second crash and 4 s after, of a 4 s expiry: expired"
    );
}
