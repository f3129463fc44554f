//! Command-line flags end to end: both dash styles, `=` and space, `COOLPY7_*` environment
//! variables, and bad values (exit code 2).

use coolpy7_tests::broker::run_to_exit;
use coolpy7_tests::{unique_id, Broker, RawClient};

/// The QoS granted for a QoS 2 request on this broker.
async fn granted_for_qos2(broker: &Broker) -> u8 {
    let mut client = RawClient::connect_v311(broker.mqtt_addr(), &unique_id("flags")).await;
    client.subscribe(1, &[("f/t", 2)]).await[0]
}

#[tokio::test]
async fn flags_accept_both_dash_styles_and_equals() {
    for args in [
        &["-mqos", "1"][..],
        &["--mqos", "1"][..],
        &["-mqos=1"][..],
        &["--mqos=1"][..],
    ] {
        let broker = Broker::start(args);
        assert_eq!(granted_for_qos2(&broker).await, 1, "with {args:?}");
    }
    let broker = Broker::start(&[]);
    assert_eq!(granted_for_qos2(&broker).await, 2, "default -mqos is 2");
}

#[tokio::test]
async fn environment_variables_set_flags_and_the_command_line_wins() {
    let broker = Broker::start_with_env(&[], &[("COOLPY7_MQOS", "0")]);
    assert_eq!(granted_for_qos2(&broker).await, 0, "COOLPY7_MQOS=0");
    let broker = Broker::start_with_env(&["-mqos", "1"], &[("COOLPY7_MQOS", "0")]);
    assert_eq!(
        granted_for_qos2(&broker).await,
        1,
        "the flag wins over COOLPY7_MQOS"
    );
}

#[test]
fn bad_flag_values_exit_with_code_2_naming_the_flag() {
    let cases: [(&[&str], &str); 5] = [
        (&["-mqos", "banana"], "mqos"),
        (&["-mqos", "3"], "mqos"),
        (&["-mif", "lots"], "mif"),
        (&["-mif=-1"], "mif"),
        (&["-l", "nope"], "l"),
    ];
    for (args, name) in cases {
        let mut args = args.to_vec();
        args.extend(["-hl", "nil"]);
        let (code, output) = run_to_exit(&args);
        assert_eq!(code, Some(2), "{args:?}: output {output}");
        assert!(
            output.contains(name),
            "the error for {args:?} names the flag {name}: {output}"
        );
    }
}

#[test]
fn help_lists_the_flags() {
    let (code, output) = run_to_exit(&["-h"]);
    assert_eq!(code, Some(0), "{output}");
    for flag in ["mqos", "mif", "mpl", "mc", "nt", "syst", "hl"] {
        assert!(output.contains(flag), "-h mentions {flag}: {output}");
    }
}

/// The scheduling policy in a `/proc/.../stat` line (field 41).
#[cfg(target_os = "linux")]
fn policy_in_stat(stat: &str) -> u32 {
    // After the command name in parentheses, fields start at 3.
    let after_comm = &stat[stat.rfind(')').expect("comm in stat") + 2..];
    after_comm
        .split(' ')
        .nth(41 - 3)
        .and_then(|field| field.parse().ok())
        .expect("policy field")
}

/// The scheduling policies of a process's threads named `name`.
#[cfg(target_os = "linux")]
fn thread_policies(pid: u32, name: &str) -> Vec<u32> {
    let mut policies = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc tasks");
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).expect("task stat");
        policies.push(policy_in_stat(&stat));
    }
    policies
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn thread_scheduling_policy_is_batch_unless_told_normal() {
    const SCHED_BATCH: u32 = 3;
    // `normal` leaves the broker's threads as it was started: as this test's thread is.
    let as_started =
        policy_in_stat(&std::fs::read_to_string("/proc/thread-self/stat").expect("own stat"));
    assert_ne!(
        as_started, SCHED_BATCH,
        "the tests run under SCHED_BATCH themselves"
    );
    for (args, expected) in [
        (&[][..], SCHED_BATCH),
        (&["-tsp", "normal"][..], as_started),
        (&["-tsp=batch"][..], SCHED_BATCH),
    ] {
        let broker = Broker::start(args);
        // The broker answers MQTT: its runtime's workers exist.
        granted_for_qos2(&broker).await;
        let mut policies = thread_policies(broker.pid(), "tokio-rt-worker");
        assert!(!policies.is_empty(), "{args:?}: no worker threads found");
        policies.extend(thread_policies(broker.pid(), "coolpy7"));
        assert!(
            policies.iter().all(|&policy| policy == expected),
            "{args:?}: worker policies {policies:?}, expected {expected}"
        );
    }
    let broker = Broker::start_with_env(&[], &[("COOLPY7_TSP", "normal")]);
    granted_for_qos2(&broker).await;
    let policies = thread_policies(broker.pid(), "tokio-rt-worker");
    assert!(
        !policies.is_empty() && policies.iter().all(|&p| p == as_started),
        "COOLPY7_TSP=normal: {policies:?}"
    );
}
