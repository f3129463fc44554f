//! Starts the real `coolpy7` binary as a child process and gives tests its addresses, its HTTP
//! API, its metrics and its log.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http::{self, Response};
use crate::TIMEOUT;

/// How long the broker may take to print its listener addresses.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The log kept in memory is trimmed to its last this-many bytes.
const MAX_LOG: usize = 8 * 1024 * 1024;

const MQTT_MARKER: &str = "MQTT listener on tcp ";
/// Every MQTT listener's line: `MQTT listener on <tcp|tls|ws|wss> <address>`.
const ANY_LISTENER_MARKER: &str = "MQTT listener on ";
const HTTP_MARKER: &str = "HTTP listener on http://";
/// The CoAP publish listener's line (`-cl`): `CoAP listener on udp <address>`.
const COAP_MARKER: &str = "CoAP listener on udp ";

/// A running broker. The process is killed (and reaped) when this is dropped; if the test is
/// panicking at that moment, the tail of the broker's log is printed to help diagnose it.
pub struct Broker {
    child: Option<Child>,
    mqtt: SocketAddr,
    http: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    args: Vec<String>,
    exit: Option<ExitStatus>,
}

/// The `coolpy7` binary: `$COOLPY7_BIN`, or `target/<profile>/coolpy7` next to the running test
/// executable (`target/<profile>/deps/<test>`).
pub fn binary_path() -> PathBuf {
    if let Some(path) = std::env::var_os("COOLPY7_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "COOLPY7_BIN={} is not a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(format!("coolpy7{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "the coolpy7 binary was not found at {}: run `cargo build -p coolpy7` first (with the \
         same profile as the tests), or set COOLPY7_BIN to its path",
        path.display()
    );
    path
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The address of whichever MQTT listener `line` announces.
fn any_listener_address(line: &str) -> Option<SocketAddr> {
    let line = strip_ansi(line);
    let start = line.find(ANY_LISTENER_MARKER)? + ANY_LISTENER_MARKER.len();
    let (_kind, rest) = line[start..].split_once(' ')?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The address printed after `marker` in `line`, if any (ANSI colours are ignored).
pub fn address_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let line = strip_ansi(line);
    let start = line.find(marker)? + marker.len();
    let token: String = line[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | ',' | '/' | ')'))
        .collect();
    token.parse().ok()
}

fn spawn_reader(
    stream: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
    lines: mpsc::Sender<String>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&raw).into_owned();
            {
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                if !line.ends_with('\n') {
                    log.push('\n');
                }
                if log.len() > MAX_LOG {
                    let mut cut = log.len() - MAX_LOG / 2;
                    while !log.is_char_boundary(cut) {
                        cut += 1;
                    }
                    log.replace_range(..cut, "[... earlier log trimmed ...]\n");
                }
            }
            // Nobody listens after start-up; that is fine.
            let _ = lines.send(line);
        }
    });
}

fn flag_name(arg: &str) -> Option<&str> {
    let name = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    Some(name.split('=').next().unwrap_or(name))
}

/// The value given to flag `name` in `args`, in either `-name=value` or `-name value` form.
fn flag_value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let mut found = None;
    for (i, arg) in args.iter().enumerate() {
        if flag_name(arg) == Some(name) {
            found = match arg.split_once('=') {
                Some((_, value)) => Some(value),
                None => args.get(i + 1).map(String::as_str),
            };
        }
    }
    found
}

/// Only what the test asks for: no `COOLPY7_*` settings inherited from the environment.
fn without_coolpy7_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("COOLPY7_") {
            command.env_remove(key);
        }
    }
}

/// Runs the binary with `args` and no `COOLPY7_*` environment, expecting it to exit by itself
/// within 5 s (bad flags, `-h`): (exit code, stdout + stderr).
pub fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut command = Command::new(binary_path());
    without_coolpy7_env(&mut command);
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start coolpy7");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on coolpy7") {
            let output = child.wait_with_output().expect("coolpy7 output");
            let text = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            return (status.code(), text);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("coolpy7 {args:?} did not exit within 5 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Broker {
    /// Starts `coolpy7 -l 127.0.0.1:0 -hl 127.0.0.1:0 --log-level debug <extra_args>` and waits
    /// (at most [`START_TIMEOUT`]) for both listener addresses in its log, then for `/healthz`
    /// to answer 200. `extra_args` may override `-l`, `-hl` (`-hl nil` disables HTTP) and
    /// `--log-level`.
    pub fn start(extra_args: &[&str]) -> Broker {
        Broker::start_with_env(extra_args, &[])
    }

    /// Like [`Broker::start`], with extra environment variables (e.g. `COOLPY7_MQOS`).
    /// When HTTP is on, also waits until `/healthz` answers 200.
    pub fn start_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> Broker {
        Broker::start_with_prefix(&[], extra_args, env)
    }

    /// Like [`Broker::start_with_env`], but runs the binary under a command `prefix` such as
    /// `["ip", "netns", "exec", "ns1"]` (which must `exec` the binary, so that [`Broker::pid`]
    /// is the broker's). An empty prefix runs the binary directly.
    pub fn start_with_prefix(prefix: &[&str], extra_args: &[&str], env: &[(&str, &str)]) -> Broker {
        let mut broker = Broker::launch(prefix, extra_args, env);
        if broker.http.is_some() {
            broker.wait_ready();
        }
        broker
    }

    /// Starts the broker and returns as soon as both listener addresses are logged, without
    /// waiting for `/healthz` to answer 200 (to test that readiness itself).
    pub fn start_without_readiness_wait(extra_args: &[&str]) -> Broker {
        Broker::launch(&[], extra_args, &[])
    }

    /// Like [`Broker::start_with_prefix`] for a broker listening on every interface (`-l` and
    /// `-hl` without a host) inside a network namespace: the test reaches its listeners at
    /// `reach` instead of the unspecified address it logs.
    pub fn start_reached_at(
        prefix: &[&str],
        extra_args: &[&str],
        env: &[(&str, &str)],
        reach: std::net::IpAddr,
    ) -> Broker {
        let mut broker = Broker::launch(prefix, extra_args, env);
        for addr in std::iter::once(&mut broker.mqtt).chain(broker.http.as_mut()) {
            if addr.ip().is_unspecified() {
                addr.set_ip(reach);
            }
        }
        if broker.http.is_some() {
            broker.wait_ready();
        }
        broker
    }

    /// Polls `/healthz` (blocking) until it answers 200, within [`START_TIMEOUT`].
    fn wait_ready(&mut self) {
        let addr = self.http_addr();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let last = match http::get_blocking(addr, "/healthz") {
                Ok(response) if response.status == 200 => return,
                Ok(response) => format!("{} {}", response.status, response.body),
                Err(e) => e,
            };
            if let Some(status) = self.try_exit_status() {
                panic!(
                    "coolpy7 exited during start-up with {status}; log:\n{}",
                    self.logs()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "GET /healthz did not answer 200 within {START_TIMEOUT:?} of start (last: \
                     {last}); log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn launch(prefix: &[&str], extra_args: &[&str], env: &[(&str, &str)]) -> Broker {
        let extra: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let mut args: Vec<String> = Vec::new();
        if flag_value(&extra, "l").is_none() {
            args.extend(["-l".into(), "127.0.0.1:0".into()]);
        }
        if flag_value(&extra, "hl").is_none() {
            args.extend(["-hl".into(), "127.0.0.1:0".into()]);
        }
        if flag_value(&extra, "log-level").is_none() {
            let level = std::env::var("COOLPY7_TEST_LOG_LEVEL").unwrap_or_else(|_| "debug".into());
            args.extend(["--log-level".into(), level]);
        }
        args.extend(extra);
        let want_http = flag_value(&args, "hl") != Some("nil");

        let binary = binary_path();
        let mut command = match prefix.split_first() {
            None => Command::new(&binary),
            Some((program, prefix_args)) => {
                let mut command = Command::new(program);
                command.args(prefix_args).arg(&binary);
                command
            }
        };
        without_coolpy7_env(&mut command);
        let mut child = command
            .args(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {prefix:?} {}: {e}", binary.display()));

        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        spawn_reader(
            child.stdout.take().expect("stdout"),
            log.clone(),
            tx.clone(),
        );
        spawn_reader(child.stderr.take().expect("stderr"), log.clone(), tx);

        let mut broker = Broker {
            child: Some(child),
            mqtt: SocketAddr::from(([0, 0, 0, 0], 0)),
            http: None,
            log,
            args,
            exit: None,
        };

        let deadline = Instant::now() + START_TIMEOUT;
        let mut mqtt = None;
        let mut http = None;
        while mqtt.is_none() || (want_http && http.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    // The plain listener when it is on (logged first), else the first other.
                    mqtt = mqtt.or_else(|| any_listener_address(&line));
                    http = http.or_else(|| address_after(&line, HTTP_MARKER));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            if let Some(status) = broker.try_exit_status() {
                // Let the readers catch the last lines.
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "coolpy7 {:?} exited during start-up with {status}; log:\n{}",
                    broker.args,
                    broker.logs()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "coolpy7 {:?} did not log its listener addresses within {START_TIMEOUT:?} \
                     (want lines containing {MQTT_MARKER:?}{}); log:\n{}",
                    broker.args,
                    if want_http {
                        format!(" and {HTTP_MARKER:?}")
                    } else {
                        String::new()
                    },
                    broker.logs()
                );
            }
        }
        broker.mqtt = mqtt.expect("loop exits with an address");
        broker.http = http;
        broker
    }

    /// The address the MQTT listener is bound to.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt
    }

    /// The address of the HTTP API; panics if HTTP was disabled.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .expect("this broker was started with HTTP disabled (-hl nil)")
    }

    /// Whether the HTTP API is on (it is unless started with `-hl nil`).
    pub fn http_enabled(&self) -> bool {
        self.http.is_some()
    }

    /// The first log line that contains every one of `parts`, waiting (at most `timeout`) for
    /// it: the log is read from the broker's pipes by another thread, so a line the broker wrote
    /// before answering a client may reach the test after the answer does.
    pub async fn wait_log_line(&self, parts: &[&str], timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if let Some(line) = logs
                .lines()
                .find(|line| parts.iter().all(|part| line.contains(part)))
            {
                return line.to_string();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {parts:?} within {timeout:?}; log:\n{logs}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The address of the MQTT listener of `kind` (tcp, tls, ws, wss), waiting (bounded) for its
    /// log line.
    pub fn listener_addr(&self, kind: &str) -> SocketAddr {
        let marker = format!("{ANY_LISTENER_MARKER}{kind} ");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(addr) = self.logged_address(&marker) {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} listener logged within {START_TIMEOUT:?}; log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The address of the CoAP publish listener (started with `-cl`), waiting (bounded) for its
    /// log line.
    pub fn coap_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(addr) = self.logged_address(COAP_MARKER) {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "no line with {COAP_MARKER:?} within {START_TIMEOUT:?} (was -cl given?); log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The address printed after `marker` in the first log line that has one, e.g.
    /// `logged_address("cluster gossip on udp ")`.
    pub fn logged_address(&self, marker: &str) -> Option<SocketAddr> {
        self.logs()
            .lines()
            .find_map(|line| address_after(line, marker))
    }

    /// The arguments the broker was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }

    /// Everything the broker wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `GET path` on the HTTP API: (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let response = self.http_get_full(path).await;
        (response.status, response.body)
    }

    /// `GET path` on the HTTP API, with headers.
    pub async fn http_get_full(&self, path: &str) -> Response {
        http::get(self.http_addr(), path).await
    }

    /// `DELETE path` on the HTTP API: (status, body).
    pub async fn http_delete(&self, path: &str) -> (u16, String) {
        let response = http::request(self.http_addr(), "DELETE", path).await;
        (response.status, response.body)
    }

    /// The body of `GET /metrics` (asserting status 200).
    pub async fn metrics_text(&self) -> String {
        let (status, body) = self.http_get("/metrics").await;
        assert_eq!(status, 200, "GET /metrics status; body: {body}");
        body
    }

    /// The current value of a Prometheus series, e.g. `coolpy7_connections` or
    /// `coolpy7_messages_received_total{qos="1"}`; panics if the series is absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        match http::find_metric(&text, series) {
            Ok(Some(value)) => value,
            Ok(None) => panic!("series {series} not found in /metrics:\n{text}"),
            Err(e) => panic!("/metrics is not valid Prometheus text ({e}):\n{text}"),
        }
    }

    /// Polls `series` until `pred` holds (at most `timeout`); returns the last value, panicking
    /// with `what` if it never holds.
    pub async fn wait_metric(
        &self,
        series: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let value = self.metric(series).await;
            if pred(value) {
                return value;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{series} = {value} after {timeout:?}; expected {what}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until `coolpy7_connections` equals `n` (e.g. so that a client that just
    /// disconnected is known to be offline before messages are published for it).
    pub async fn wait_connections(&self, n: u64) {
        self.wait_metric(
            "coolpy7_connections",
            &format!("{n} open connections"),
            TIMEOUT,
            |v| v == n as f64,
        )
        .await;
    }

    /// A field (in kB) of `/proc/<pid>/status`, e.g. `VmRSS` or `VmSize`.
    pub fn proc_status_kb(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        status
            .lines()
            .find_map(|line| {
                let rest = line.strip_prefix(field)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no {field} in {path}:\n{status}"))
    }

    /// Resident set size in kB.
    pub fn rss_kb(&self) -> u64 {
        self.proc_status_kb("VmRSS")
    }

    /// Whether the process has exited (reaping it if so).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            let child = self.child.as_mut()?;
            self.exit = child.try_wait().expect("try_wait");
        }
        self.exit
    }

    /// Asserts the broker process is still running.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_exit_status() {
            panic!("the broker exited with {status}; log:\n{}", self.logs());
        }
    }

    /// Sends SIGTERM to the broker.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends a signal (`"TERM"`, `"INT"`, ...) to the broker with `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(
            status.success(),
            "kill -{name} {} failed: {status}",
            self.pid()
        );
    }

    /// Waits (polling, at most `timeout`) for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.logs();
            let tail_start = log.len().saturating_sub(64 * 1024);
            let mut start = tail_start;
            while !log.is_char_boundary(start) {
                start += 1;
            }
            eprintln!(
                "---- coolpy7 {:?} (mqtt {}, http {:?}) log{} ----\n{}\n---- end of coolpy7 log ----",
                self.args,
                self.mqtt,
                self.http,
                if tail_start > 0 { " (last 64 KiB)" } else { "" },
                &log[start..]
            );
        }
        if let Some(mut child) = self.child.take() {
            if self.exit.is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listener_lines() {
        let line = "2025-01-01T00:00:00.000Z  INFO coolpy7::listener: MQTT listener on tcp 127.0.0.1:40001\n";
        assert_eq!(
            address_after(line, MQTT_MARKER),
            Some("127.0.0.1:40001".parse().unwrap())
        );
        let line = "\u{1b}[32m INFO\u{1b}[0m HTTP listener on http://127.0.0.1:8081/ ready";
        assert_eq!(
            address_after(line, HTTP_MARKER),
            Some("127.0.0.1:8081".parse().unwrap())
        );
        assert_eq!(address_after("nothing here", MQTT_MARKER), None);
    }

    #[test]
    fn finds_flag_values() {
        let args: Vec<String> = ["-l", ":1883", "--hl=nil", "-mq", "5"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(flag_value(&args, "l"), Some(":1883"));
        assert_eq!(flag_value(&args, "hl"), Some("nil"));
        assert_eq!(flag_value(&args, "mq"), Some("5"));
        assert_eq!(flag_value(&args, "mqos"), None);
    }
}
