//! Files the broker re-reads while it runs (TLS certificates, access-control files): checked
//! every interval and whenever SIGHUP arrives, until the server stops. The owner of the files
//! says how to read them (on a blocking thread: file reads and parsing block) and what to do
//! with the outcome; this module owns only the when.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::Signal;
use tokio::sync::watch;

/// Calls `check` on a blocking thread every `interval` and on each SIGHUP (`hangup`), then
/// `report` with why it ran (`"change"` or `"SIGHUP"`) and what it returned, until `stop`
/// turns true.
pub async fn watch<T: Send + 'static>(
    interval: Duration,
    mut hangup: Option<Signal>,
    mut stop: watch::Receiver<bool>,
    check: Arc<dyn Fn() -> T + Send + Sync>,
    mut report: impl FnMut(&'static str, T),
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        let cause = tokio::select! {
            _ = ticks.tick() => "change",
            Some(()) = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => "SIGHUP",
            _ = stop.changed() => return,
        };
        let checking = check.clone();
        if let Ok(outcome) = tokio::task::spawn_blocking(move || checking()).await {
            report(cause, outcome);
        }
    }
}
