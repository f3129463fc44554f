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
