//! Starting and stopping the broker: raises the open-files limit and divides it between MQTT,
//! HTTP and the process ([`admission`]), binds the listeners named by the [`Config`], logs
//! them, runs until the shutdown future completes, then drains ([`drain`]: stops accepting,
//! disconnects the clients at `-dr` per second within `-dg`), waits (bounded) for the
//! connections to finish, leaves the cluster and stops the HTTP API last.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::admission::{self, ConnectionPlan, MaxConnectionsSource, Slots};
use crate::auth::{self, AccessControl};
use crate::broker::Broker;
use crate::cluster;
use crate::coap;
use crate::config::Config;
use crate::drain::{self, Lifecycle};
use crate::http::{self, HttpLimits, HttpState};
use crate::listener;
use crate::metrics::Metrics;
use crate::store::{RetainedRecord, Store};
use crate::transport::certificates::{self, CertificateStore};
use crate::transport::TransportSettings;

/// How long shutdown waits for connections to finish their last writes once each was asked
/// to close.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How often offline sessions are checked for expiry and delayed wills: the precision of both
/// (MQTT 5 intervals are whole seconds).
const SESSION_SWEEP: Duration = Duration::from_millis(250);

/// Discards offline sessions whose expiry has passed, publishes the delayed wills that are due
/// and removes expired retained messages. Each sweep looks only at what is due (the registry
/// and the retained store keep their deadlines in order).
async fn expire_sessions(broker: Arc<Broker>, mut stopping: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(SESSION_SWEEP);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopping.changed() => return,
        }
        let now = std::time::Instant::now();
        let (wills, expired) = broker.sessions.expire(now, &broker.router);
        if expired > 0 {
            tracing::debug!(expired, "offline sessions expired");
        }
        let expired = broker.router.expire_retained(now);
        if expired > 0 {
            tracing::debug!(expired, "retained messages expired");
        }
        for will in wills {
            broker.publish(will);
        }
    }
}

/// Raises the open-files limit, divides it (see [`ConnectionPlan`]) and logs the result; sets
/// the effective `-mc` in `config`.
fn plan_connections(config: &mut Config) -> anyhow::Result<ConnectionPlan> {
    let fd_limit = admission::raise_fd_limit().context("cannot read the open-files limit")?;
    let http = config
        .http_listen
        .as_ref()
        .map(|_| config.http_max_connections);
    let plan = ConnectionPlan::new(fd_limit.soft, config.max_connections, http)
        .map_err(anyhow::Error::msg)?;
    config.max_connections = Some(plan.max_connections);
    let source = match plan.source {
        MaxConnectionsSource::Derived => "derived from the open-files limit",
        MaxConnectionsSource::Explicit => "given",
        MaxConnectionsSource::Capped { .. } => "capped by the open-files limit",
    };
    info!(
        "connection limits: -mc {} ({source}); {} MQTT sockets, {} HTTP connections; \
         open-files limit {}{}",
        plan.max_connections,
        plan.mqtt_sockets,
        plan.http_connections,
        fd_limit.soft,
        fd_limit
            .raised_from
            .map(|from| format!(" (raised from {from})"))
            .unwrap_or_default(),
    );
    if let MaxConnectionsSource::Capped { asked } = plan.source {
        warn!(
            "-mc {asked} leaves no room for handshakes among the {} MQTT sockets the \
             open-files limit {} allows; using {}",
            plan.mqtt_sockets, fd_limit.soft, plan.max_connections
        );
    }
    Ok(plan)
}

/// Runs the broker until `shutdown` completes.
pub async fn run(
    mut config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let plan = plan_connections(&mut config)?;
    let metrics = Arc::new(Metrics::new());
    let lifecycle = Arc::new(Lifecycle::default());
    // Listeners stop at the start of the drain; everything else (the HTTP API, which answers
    // the probes during the drain, the session sweep, the file watchers) once it is over.
    let (stop_accepting, accepting_stops) = watch::channel(false);
    let (stop, stopping) = watch::channel(false);

    // SIGHUP means "reload" to a daemon (the TLS files here); taken before anything listens, so
    // that from the first connection on it can never end the process, its default action.
    let hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            warn!(%error, "cannot take SIGHUP; TLS files are still checked every -tri seconds");
            None
        }
    };
    // Loaded before anything listens, like the certificates: a file that does not load stops
    // the start.
    let access = AccessControl::load(&config.access).map_err(anyhow::Error::msg)?;
    // Its own SIGHUP listener: tokio hands every signal to each of them.
    let access_hangups = match &access {
        Some(control) if control.watches_files() => {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
        }
        _ => None,
    };
    // Loaded before anything listens: a certificate that does not load stops the start.
    let certificates = match config.tls.clone() {
        Some(settings) => Some(Arc::new(
            CertificateStore::load(settings).map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    let mut listeners = Vec::new();
    for listener in &config.listeners {
        let bound = listener.addr.bind_tcp().await.with_context(|| {
            format!(
                "cannot listen for MQTT on {} ({})",
                listener.addr, listener.kind
            )
        })?;
        let settings = TransportSettings {
            kind: listener.kind,
            proxy_protocol: listener.proxy_protocol,
            certificates: certificates.clone().filter(|_| listener.kind.uses_tls()),
            ws_path: config.ws_path.clone(),
        };
        listeners.push((bound, Arc::new(settings)));
    }
    // The first listener (the plain one unless it is off) names the MQTT port.
    let (first, _) = listeners
        .first()
        .context("no MQTT listener is configured")?;
    let mqtt_addr = first.local_addr()?;
    let mut cluster = match config.cluster.clone() {
        Some(cluster) => {
            // The cluster's UDP ports follow the MQTT listen host when every listener has the
            // same one (all interfaces, or the one address asked for); listeners on different
            // hosts (a plain one on loopback for local tools, TLS on all) leave them on all.
            let first = &config.listeners[0].addr.host;
            let host = config
                .listeners
                .iter()
                .all(|listener| &listener.addr.host == first)
                .then_some(first.as_deref())
                .flatten()
                .and_then(|host| host.trim_matches(['[', ']']).parse().ok());
            Some(cluster::Bound::bind(cluster, host, mqtt_addr.port()).await?)
        }
        None => None,
    };
    // Bound before the broker reports ready, like the MQTT listeners: a port in use stops the
    // start. Datagrams that arrive before its task runs wait in the socket's buffer.
    let coap_socket = match &config.coap_listen {
        Some(address) => Some(
            address
                .bind_udp()
                .await
                .with_context(|| format!("cannot listen for CoAP on udp {address}"))?,
        ),
        None => None,
    };
    // Bound means ready: connections queue in the backlog until the accept loop takes them, so
    // /healthz can say so before anyone reads the listener lines below.
    lifecycle.serving();
    for (bound, settings) in &listeners {
        let proxy = if settings.proxy_protocol {
            " (PROXY protocol)"
        } else {
            ""
        };
        info!(
            "MQTT listener on {} {}{proxy}",
            settings.kind,
            bound.local_addr()?
        );
    }
    if let Some(socket) = &coap_socket {
        info!("CoAP listener on udp {}", socket.local_addr()?);
    }

    let forwarder = cluster
        .as_mut()
        .map(|bound| bound.forwarder(metrics.clone()));
    let handover = cluster
        .as_mut()
        .map(|bound| bound.handover(metrics.clone()));
    let broker =
        Arc::new(Broker::new(config, metrics.clone(), forwarder, access).with_handover(handover));
    // Read back before anything can connect: the sessions at once, the retained messages once
    // the cluster stamps them (see below).
    let (store, mut retained_read_back) = match &broker.config.data_dir {
        Some(dir) => {
            let (store, mut retained) = open_data_dir(&broker, dir)?;
            // Outside a cluster nothing stamps them: in before the HTTP API can publish.
            if cluster.is_none() {
                for record in retained.drain(..) {
                    broker.router.restore_retained(record.message, record.stamp);
                }
            }
            (Some(store), retained)
        }
        None => (None, Vec::new()),
    };
    // The HTTP API closes clients' connections through the broker's session registry.
    let config = &broker.config;
    if let Some(address) = &config.http_listen {
        let listener = address
            .bind_tcp()
            .await
            .with_context(|| format!("cannot listen for HTTP on {address}"))?;
        info!("HTTP listener on http://{}", listener.local_addr()?);
        let state = HttpState {
            metrics: metrics.clone(),
            broker: broker.clone(),
            sys_token: config.sys_token.clone(),
            lifecycle: lifecycle.clone(),
            version: crate::VERSION,
            members: cluster.as_ref().map(cluster::Bound::members),
        };
        let limits = HttpLimits {
            max_connections: plan.http_connections,
            header_timeout: config.http_header_timeout,
        };
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            };
            if let Err(error) = http::serve(listener, state, limits, stopped).await {
                warn!(%error, "HTTP server failed");
            }
        });
    }

    let cluster = cluster
        .map(|bound| bound.start(broker.clone()))
        .transpose()
        .context("cannot start the cluster's sync sender")?;
    // In a cluster the router stamps retained messages from its start; those read back keep the
    // stamps they were written with, so that a newer write elsewhere still wins over them.
    for record in retained_read_back.drain(..) {
        broker.router.restore_retained(record.message, record.stamp);
    }
    let coap = coap_socket
        .map(|socket| tokio::spawn(coap::serve(socket, broker.clone(), accepting_stops.clone())));
    tokio::spawn(expire_sessions(broker.clone(), stopping.clone()));
    let (done, mut all_done) = mpsc::channel::<()>(1);
    let access_watched = match &broker.access {
        Some(control) if control.watches_files() => {
            let sessions = broker.clone();
            tokio::spawn(auth::watch_files(
                control.clone(),
                access_hangups,
                stopping.clone(),
                move || sessions.sessions.recheck_all(),
            ));
            true
        }
        _ => false,
    };
    match (certificates, hangups) {
        (Some(store), hangups) => {
            tokio::spawn(certificates::watch_files(store, hangups, stopping.clone()));
        }
        // The access-control files take SIGHUP themselves.
        (None, Some(_)) if access_watched => {}
        (None, Some(hangups)) => {
            tokio::spawn(certificates::ignore_hangups(hangups, stopping.clone()));
        }
        (None, None) => {}
    }
    let sockets = Slots::new(plan.mqtt_sockets, broker.metrics.mqtt_sockets.clone());
    let accepting: Vec<_> = listeners
        .into_iter()
        .map(|(bound, settings)| {
            tokio::spawn(listener::accept_loop(
                bound,
                settings,
                broker.clone(),
                sockets.clone(),
                accepting_stops.clone(),
                done.clone(),
            ))
        })
        .collect();
    drop(done);

    shutdown.await;
    let drain_started = tokio::time::Instant::now();
    info!("shutting down: draining");
    // /readyz answers 503 from here on.
    lifecycle.draining();
    broker.begin_shutdown();
    // Before any client goes: the peers must not send this node the sessions it gives up.
    if let Some(handover) = &broker.handover {
        handover.announce_draining();
    }
    let _ = stop_accepting.send(true);
    for accepting in accepting {
        let _ = accepting.await;
    }
    if let Some(coap) = coap {
        let _ = coap.await;
    }
    drain::disconnect_clients(&broker, &broker.config.drain, drain_started).await;
    // Whoever claimed a session while the drain listed the clients (see `disconnect_clients`).
    broker.shut_down();
    if tokio::time::timeout(DRAIN_TIMEOUT, all_done.recv())
        .await
        .is_err()
    {
        warn!("connections still open after {DRAIN_TIMEOUT:?}; exiting anyway");
    }
    if let Some(handover) = &broker.handover {
        drain::hand_sessions_over(&broker, handover, drain_started + broker.config.drain.grace)
            .await;
    }
    // Sessions in memory only end with the process: delayed wills are due now. In the data
    // directory they wait with their sessions for the next start.
    if store.is_none() {
        for will in broker.sessions.take_delayed_wills() {
            broker.publish(will);
        }
    }
    // After the connections, so that the wills their closing published reach the other nodes;
    // then the others mark this node down at once instead of after the failure detector's
    // timeouts.
    if let Some(cluster) = cluster {
        cluster.leave().await;
    }
    let _ = stop.send(true);
    if let Some(store) = &store {
        store.close();
    }
    info!("stopped");
    Ok(())
}

/// Opens the data directory (`-dd`) and reads it back: the sessions go into the registry at
/// once, the retained messages are returned (they are put in once the cluster stamps them).
fn open_data_dir(
    broker: &Arc<Broker>,
    dir: &std::path::Path,
) -> anyhow::Result<(Arc<Store>, Vec<RetainedRecord>)> {
    let started = std::time::Instant::now();
    let store = Store::open(dir, broker.config.data_sync).with_context(|| {
        format!(
            "cannot open the data directory {}: if it is damaged, move it aside to start \
             without the state it holds",
            dir.display()
        )
    })?;
    let loaded = store.load().context("cannot read the data directory")?;
    let sessions = loaded.sessions.len();
    let retained = loaded.retained.len();
    for session in loaded.sessions {
        broker
            .sessions
            .install_loaded(session, &store, &broker.router);
    }
    broker.sessions.set_store(store.clone());
    // From now on: what a peer or the HTTP API retains before the rest is read back is written.
    broker.router.set_store(store.clone());
    if loaded.skipped > 0 {
        warn!(
            dir = %dir.display(),
            skipped = loaded.skipped,
            "data directory: records that did not decode (or belonged to no session) were removed"
        );
    }
    info!(
        dir = %dir.display(),
        sessions,
        retained,
        took_ms = started.elapsed().as_millis() as u64,
        "data directory read back"
    );
    Ok((store, loaded.retained))
}
