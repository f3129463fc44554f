//! The `coolpy7` binary: parses the command line, sets up logging and the runtime, and runs the
//! broker until SIGINT or SIGTERM. Everything else lives in the library, except the choice of
//! allocator, which is the binary's to make. `coolpy7 passwd ...` edits a password file instead
//! (see `coolpy7::passwd`).

use std::future::Future;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use coolpy7::config::Config;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// Every message is allocated by its publisher's task and freed by its subscriber's, usually on
/// another worker thread. Once its per-thread cache is full, glibc's malloc takes the allocating
/// arena's lock for each such free, against that thread's own allocations: with a deep mailbox,
/// a fan-in spent a third of its time in malloc and delivered half of what it does with
/// jemalloc, whose thread caches hand remote frees back in batches.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Before the broker's flags are parsed: `passwd` is no flag, and needs neither logging nor
    // a runtime.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|first| first == "passwd") {
        return coolpy7::passwd::run(args);
    }
    let config = Config::from_args();
    init_tracing(&config.log_level);
    tracing::info!(version = coolpy7::VERSION, "starting coolpy7");

    // Before the runtime starts, so that every thread of the broker inherits it.
    if let Err(error) = config.thread_scheduling.apply() {
        tracing::warn!(
            %error,
            policy = ?config.thread_scheduling,
            "thread scheduling policy (-tsp) not applied; running with the system's"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // Installed before the broker binds anything, so a SIGTERM that arrives once it
        // listens is always a graceful stop.
        let shutdown = shutdown_signal()?;
        coolpy7::server::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "coolpy7 failed");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(filter: &str) {
    // The filter was validated while parsing the command line; the fallback is unreachable in
    // practice but keeps a logging problem from stopping the broker.
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout)
        .init();
}

/// Installs the SIGINT and SIGTERM handlers (in the runtime) and returns a future that completes
/// on the first of them. A second one exits at once, so that an operator can still interrupt a
/// shutdown that hangs (tokio keeps the handlers installed, so the default action is gone).
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    Ok(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(signal = name, "signal received, stopping");
        tokio::spawn(async move {
            // 128 + signal number, as a shell reports a process killed by that signal.
            let (name, code) = tokio::select! {
                _ = interrupt.recv() => ("SIGINT", 130),
                _ = terminate.recv() => ("SIGTERM", 143),
            };
            tracing::warn!(signal = name, "second signal during shutdown; exiting now");
            std::process::exit(code);
        });
    })
}
