//! The real `coolpy7` binary's command line: help, usage errors and their exit codes, and a
//! clean stop on SIGTERM. Every child process is killed if it runs longer than [`LIMIT`].

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(10);

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// The binary with a clean environment: no inherited `COOLPY7_*` or `RUST_LOG`.
fn coolpy7(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coolpy7"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("COOLPY7_")) {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd.envs(env.iter().copied());
    cmd
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}

/// Waits for `child` (killing it after [`LIMIT`]) and collects its output.
fn finish(mut child: Child) -> Output {
    // Read both pipes concurrently so a chatty child cannot block on a full pipe.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < LIMIT => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("coolpy7 ran longer than {LIMIT:?}");
            }
            Err(err) => panic!("waiting for coolpy7: {err}"),
        }
    };
    Output {
        code: status.code(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    match coolpy7(args, env).spawn() {
        Ok(child) => finish(child),
        Err(err) => panic!("cannot start coolpy7: {err}"),
    }
}

#[test]
fn help_documents_every_flag_and_its_environment_variable() {
    for arg in ["-h", "--help"] {
        let out = run(&[arg], &[]);
        assert_eq!(out.code, Some(0), "{arg}: {}", out.all());
        for flag in [
            "-l",
            "-hl",
            "-syst",
            "-mc",
            "-mpl",
            "-mcl",
            "-mhb",
            "-hmc",
            "-hto",
            "-nt",
            "-t",
            "-mqos",
            "-mif",
            "-mq",
            "-wsa",
            "-sia",
            "--log-level",
        ] {
            assert!(
                out.stdout.contains(flag),
                "{arg}: {flag} missing:\n{}",
                out.stdout
            );
        }
        for var in [
            "COOLPY7_L",
            "COOLPY7_HL",
            "COOLPY7_SYST",
            "COOLPY7_MC",
            "COOLPY7_MPL",
            "COOLPY7_MCL",
            "COOLPY7_MHB",
            "COOLPY7_HMC",
            "COOLPY7_HTO",
            "COOLPY7_NT",
            "COOLPY7_T",
            "COOLPY7_MQOS",
            "COOLPY7_MIF",
            "COOLPY7_MQ",
            "COOLPY7_WSA",
            "COOLPY7_SIA",
            "COOLPY7_LOG_LEVEL",
        ] {
            assert!(
                out.stdout.contains(var),
                "{arg}: {var} missing:\n{}",
                out.stdout
            );
        }
        assert!(out.stdout.contains("[default: :1883]"), "{}", out.stdout);
        for default in [
            "[default: 1048576]",
            "[default: 65536]",
            "[default: 67108864]",
        ] {
            assert!(out.stdout.contains(default), "{default}: {}", out.stdout);
        }
    }
}

#[test]
fn version_exits_zero() {
    let out = run(&["-V"], &[]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        out.stdout
    );
}

#[test]
fn invalid_values_exit_2_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["-l=:99999"], "--l"),
        (&["-l", ":99999"], "-l"),
        (&["-mc=abc"], "--mc"),
        (&["-mqos=3"], "--mqos"),
        (&["-nt=0"], "--nt"),
        (&["-mcl=10"], "--mcl"),
        (&["-mhb", "1000"], "--mhb"),
        (&["-hmc=0"], "--hmc"),
        (&["-hto=x"], "--hto"),
        (&["-wsa=no"], "--wsa"),
        (&["-sia", "maybe"], "--sia"),
        (&["--log-level=foo["], "--log-level"),
        (&["-zzz=1"], "zzz"),
    ];
    for (args, flag) in cases {
        let out = run(args, &[]);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.all());
        assert!(out.stderr.contains(flag), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn invalid_environment_values_exit_2_naming_the_flag() {
    for (key, value, flag) in [
        ("COOLPY7_MC", "abc", "--mc"),
        ("COOLPY7_L", ":99999", "--l"),
        ("COOLPY7_MCL", "1", "--mcl"),
        ("COOLPY7_MHB", "-5", "--mhb"),
        ("COOLPY7_HMC", "many", "--hmc"),
        ("COOLPY7_HTO", "0", "--hto"),
        ("COOLPY7_WSA", "off", "--wsa"),
        ("COOLPY7_SIA", "2", "--sia"),
        ("COOLPY7_LOG_LEVEL", "foo[", "--log-level"),
    ] {
        let out = run(&[], &[(key, value)]);
        assert_eq!(out.code, Some(2), "{key}={value}: {}", out.all());
        assert!(out.stderr.contains(flag), "{key}={value}: {}", out.stderr);
    }
    let out = run(&[], &[("RUST_LOG", "foo[")]);
    assert_eq!(out.code, Some(2), "RUST_LOG=foo[: {}", out.all());
    assert!(out.stderr.contains("RUST_LOG"), "{}", out.stderr);
}

#[test]
fn sigterm_stops_the_broker_cleanly() {
    let mut child = match coolpy7(&["-l=127.0.0.1:0", "-hl=127.0.0.1:0"], &[]).spawn() {
        Ok(child) => child,
        Err(err) => panic!("cannot start coolpy7: {err}"),
    };
    // Signal handlers are installed before the listeners are bound, so once the broker logs a
    // listen address a SIGTERM is a graceful stop; before that it could kill it outright.
    let stdout = Arc::new(Mutex::new(String::new()));
    let reader = child.stdout.take().map(|pipe| {
        let stdout = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut text) = stdout.lock() {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        })
    });
    let started = Instant::now();
    while started.elapsed() < LIMIT / 2
        && !stdout.lock().is_ok_and(|text| text.contains("127.0.0.1:"))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    if !matches!(sent, Ok(status) if status.success()) {
        let _ = child.kill();
        let _ = child.wait();
        panic!("cannot send SIGTERM: {sent:?}");
    }
    let out = finish(child);
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    let stdout = stdout.lock().map(|text| text.clone()).unwrap_or_default();
    assert_eq!(out.code, Some(0), "{stdout}{}", out.stderr);
    assert!(stdout.contains("SIGTERM"), "{stdout}");
}
