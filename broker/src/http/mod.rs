//! The HTTP API: `/healthz` and `/readyz` for Kubernetes probes, `/metrics` for Prometheus, the
//! original Coolpy7's token-protected JSON documents `/sys` (statistics) and `/brokers`
//! (cluster members), one token-protected action, `DELETE /clients/<client id>`, which
//! closes a client's connection (MQTT 5: DISCONNECT 0x98 "Administrative action"), and Coolpy7's
//! HTTP publish, `POST /pub` ([`publish`]), authenticated like an MQTT client.
//!
//! Everything else only reads shared state ([`Metrics`], the readiness flag, the cluster's
//! member snapshot); the one action goes through the session registry, which signals the
//! connection holding that client's session, as a takeover does: the connection closes itself
//! and the registry keeps its session for its expiry. Only `POST /pub` reads a body, up to
//! `-mpl`; the connection's deadline bounds how long that may take.
//!
//! The probes must keep answering whatever clients do, so the server bounds what a connection
//! can hold: it serves one request per connection (answers say `Connection: close`; probes and
//! Prometheus reconnect cheaply), a connection that has not sent its request's headers within
//! `-hto` is closed, and none stays open longer than twice that. At most `-hmc` are open (their
//! descriptors are reserved out of the fd limit, see [`crate::admission`]); a new connection
//! beyond them closes the oldest one, once that has had [`EVICTION_GRACE`] to be served, rather
//! than being refused: a few clients cannot shut a probe out, and a probe waits at most the
//! grace for each connection accepted before it. axum's own `serve` has none of this, so
//! connections are served here with hyper's HTTP/1 server, which has the header timeout.

mod publish;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admission::{Slot, Slots};
use crate::broker::Broker;
use crate::cluster::membership::{MemberState, Members, NodeIdentity};
use crate::config::DEFAULT_SYS_TOKEN;
use crate::drain::Lifecycle;
use crate::metrics::{DropReason, Metrics, Refusal};
use crate::session::{Kick, KickReason};

/// The OpenMetrics text format that `prometheus-client` writes.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long in-flight requests may take to finish once shutdown has begun; a stalled client
/// must not hold the broker's exit hostage.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a new connection is safe from eviction: long enough for a probe on the pod network
/// to send its request and read the answer, short enough that a connection waiting for a
/// place (in the listen backlog) is not kept long when others hold every place.
const EVICTION_GRACE: Duration = Duration::from_millis(100);

/// How often a full server looks whether a connection has ended by itself.
const FULL_POLL: Duration = Duration::from_millis(10);

/// What the handlers read (and, for `DELETE /clients/<id>`, act on).
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    /// Its session registry closes a client's connection on request.
    pub broker: Arc<Broker>,
    /// The token `/sys`, `/brokers` and `/clients` require (`-syst`).
    pub sys_token: String,
    /// Whether the broker is starting, serving or draining: `/healthz` is 200 once it listens
    /// (draining included), `/readyz` only while it serves.
    pub lifecycle: Arc<Lifecycle>,
    pub version: &'static str,
    /// The cluster's members; `None` outside cluster mode.
    pub members: Option<Arc<Members>>,
}

/// What bounds the HTTP server's connections.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// `-hmc`: connections open at once; a new one beyond them closes the oldest.
    pub max_connections: usize,
    /// `-hto`: the time a connection has to send its request's headers; it is closed at twice
    /// that in any case.
    pub header_timeout: Duration,
}

/// Serves until `shutdown` completes, then lets open requests finish for at most
/// [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics = state.metrics.clone();
    let app = router(state);
    let slots = Slots::new(limits.max_connections, metrics.http_connections.clone());
    // The connection tasks in the order they were accepted, finished ones included until
    // they are pruned: the front live one is the oldest, the one a new connection evicts.
    let mut open: VecDeque<Accepted> = VecDeque::new();
    let (stop, stopping) = watch::channel(false);
    // Every connection task holds a clone; the receiver closes when the last one ends.
    let (done, mut all_done) = mpsc::channel::<()>(1);
    let mut shutdown = pin!(shutdown);
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, most likely; the MQTT listener keeps this one's free.
                tracing::warn!(%error, "HTTP accept failed; retrying in {backoff:?}");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut shutdown => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        // While this connection waits for a place the ones after it wait in the kernel's
        // backlog, in arrival order and without a descriptor: one extra descriptor at most,
        // from the process's reserve.
        let slot = tokio::select! {
            slot = take_slot(&slots, &mut open, &metrics) => slot,
            () = &mut shutdown => break,
        };
        if open.len() > limits.max_connections.saturating_mul(2) {
            open.retain(|connection| !connection.task.is_finished());
        }
        open.push_back(Accepted {
            at: Instant::now(),
            task: tokio::spawn(serve_connection(
                stream,
                // The client's address, for `POST /pub`'s authentication and rules.
                app.clone().layer(Extension(ConnectInfo(peer))),
                limits.header_timeout,
                stopping.clone(),
                (slot, done.clone()),
            )),
        });
    }
    drop(listener);
    // The receivers only go away with the connections, when nobody needs to know.
    let _ = stop.send(true);
    drop(done);
    if tokio::time::timeout(SHUTDOWN_GRACE, all_done.recv())
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests still open after {SHUTDOWN_GRACE:?}; closing them");
    }
    Ok(())
}

/// A connection being served.
struct Accepted {
    at: Instant,
    task: JoinHandle<()>,
}

/// A place for the next connection: a free one, or the oldest connection's once it is
/// [`EVICTION_GRACE`] old (it is closed). Waits while every open connection is younger.
async fn take_slot(slots: &Slots, open: &mut VecDeque<Accepted>, metrics: &Metrics) -> Slot {
    loop {
        if let Some(slot) = slots.try_take() {
            return slot;
        }
        while open
            .front()
            .is_some_and(|connection| connection.task.is_finished())
        {
            open.pop_front();
        }
        let Some(oldest) = open.front() else {
            // Every slot is held by a task that has finished but not yet dropped it.
            tokio::time::sleep(FULL_POLL).await;
            continue;
        };
        let age = oldest.at.elapsed();
        if age < EVICTION_GRACE {
            // A connection may end by itself meanwhile, so look again soon.
            tokio::time::sleep((EVICTION_GRACE - age).min(FULL_POLL)).await;
            continue;
        }
        if let Some(oldest) = open.pop_front() {
            tracing::debug!(
                age = ?age,
                "{} HTTP connections open (-hmc); closing the oldest",
                slots.limit()
            );
            metrics.refused(Refusal::HttpConnections).inc();
            oldest.task.abort();
            // Resolves once the task is dropped, with its socket and its slot.
            let _ = oldest.task.await;
        }
    }
}

/// Serves one request on a connection (the answer says `Connection: close`) and closes it,
/// [`connection_deadline`] after it was accepted at the latest, or when the server stops;
/// `held` (its slot and the server's count of open connections) is released with it.
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    header_timeout: Duration,
    mut stopping: watch::Receiver<bool>,
    held: (Slot, mpsc::Sender<()>),
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(false);
    let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    let mut connection = pin!(connection);
    let served = async {
        tokio::select! {
            result = connection.as_mut() => result,
            () = async { drop(stopping.wait_for(|stop| *stop).await) } => {
                // Finishes a request in progress; an idle connection ends at once.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    };
    match tokio::time::timeout(connection_deadline(header_timeout), served).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "HTTP connection ended"),
        Err(_) => tracing::debug!("HTTP connection still open at its deadline; closed"),
    }
    drop(held);
}

/// The longest an HTTP connection stays open: `-hto` for the request's headers, as long again
/// for the answer to be read.
fn connection_deadline(header_timeout: Duration) -> Duration {
    header_timeout.saturating_mul(2)
}

fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .route("/sys", get(sys))
        .route("/brokers", get(brokers))
        // A wildcard, because MQTT client ids may contain '/': it may be sent as is or as %2F.
        .route("/clients/{*client_id}", delete(kick_client))
        .route("/pub", post(publish::publish))
        .with_state(Arc::new(state))
}

async fn healthz(State(state): State<Arc<HttpState>>) -> Response {
    if state.lifecycle.is_live() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// Ready for traffic: MQTT is listening, the node is not draining, and in cluster mode it has
/// joined a peer or has no seed to wait for (so that a pod does not take clients before it
/// forwards to the others).
async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    let listening = state.lifecycle.is_serving();
    let joined = state.members.as_ref().is_none_or(|members| members.ready());
    // A data directory that failed a write: what the broker acknowledges may not be on disk, so
    // the Service sends the clients elsewhere.
    let disk_failed = state
        .broker
        .sessions
        .store()
        .is_some_and(|store| store.has_failed());
    match (listening, joined) {
        (true, true) if disk_failed => (
            StatusCode::SERVICE_UNAVAILABLE,
            "data directory failing: see the log",
        )
            .into_response(),
        (true, true) => (StatusCode::OK, "ok").into_response(),
        (false, _) if state.lifecycle.is_draining() => {
            (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
        }
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "not listening").into_response(),
        (true, false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting to join the cluster",
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
        )],
        state.metrics.encode_text(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct SysQuery {
    token: Option<String>,
}

/// The `/sys` document.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct SysStats {
    pub version: String,
    pub uptime_secs: u64,
    /// Open MQTT connections that completed CONNECT.
    pub connections: i64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub sessions: i64,
    pub subscriptions: i64,
    pub retained: i64,
    pub queued: i64,
    pub messages_received: PerQosStats,
    pub messages_sent: PerQosStats,
    pub payload_bytes_received: PerQosStats,
    pub payload_bytes_sent: PerQosStats,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Dropped messages by reason label (`queue_full`, ...).
    pub dropped: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct PerQosStats {
    pub total: u64,
    pub qos0: u64,
    pub qos1: u64,
    pub qos2: u64,
}

impl PerQosStats {
    fn read(counters: &[prometheus_client::metrics::counter::Counter; 3]) -> PerQosStats {
        let [qos0, qos1, qos2] = [counters[0].get(), counters[1].get(), counters[2].get()];
        PerQosStats {
            total: qos0.saturating_add(qos1).saturating_add(qos2),
            qos0,
            qos1,
            qos2,
        }
    }
}

impl SysStats {
    /// A snapshot of `metrics`. Series are read one by one, so totals may be a few messages
    /// apart under load; that is fine for statistics.
    pub fn read(metrics: &Metrics, version: &str) -> SysStats {
        SysStats {
            version: version.to_string(),
            uptime_secs: metrics.uptime().as_secs(),
            connections: metrics.connections.get(),
            connections_accepted: metrics.connections_accepted.get(),
            connections_refused: metrics.connections_refused.get(),
            sessions: metrics.sessions.get(),
            subscriptions: metrics.subscriptions.get(),
            retained: metrics.retained.get(),
            queued: metrics.queued.get(),
            messages_received: PerQosStats::read(&metrics.messages_received),
            messages_sent: PerQosStats::read(&metrics.messages_sent),
            payload_bytes_received: PerQosStats::read(&metrics.payload_bytes_received),
            payload_bytes_sent: PerQosStats::read(&metrics.payload_bytes_sent),
            bytes_received: metrics.bytes_received.get(),
            bytes_sent: metrics.bytes_sent.get(),
            dropped: DropReason::ALL
                .iter()
                .map(|&reason| (reason.label().to_string(), metrics.dropped(reason).get()))
                .collect(),
        }
    }
}

/// A malformed query string is treated like a missing token, not as a 400.
type TokenQuery = Result<Query<SysQuery>, axum::extract::rejection::QueryRejection>;

/// `None` when the query carries the `-syst` token; the 401 response otherwise.
fn refuse_without_token(state: &HttpState, query: TokenQuery) -> Option<Response> {
    let token = query.ok().and_then(|Query(q)| q.token);
    let authorised = token
        .as_deref()
        .is_some_and(|token| constant_time_eq(token.as_bytes(), state.sys_token.as_bytes()));
    (!authorised).then(|| {
        json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({ "error": "missing or invalid token" }),
        )
    })
}

async fn sys(State(state): State<Arc<HttpState>>, query: TokenQuery) -> Response {
    if let Some(refused) = refuse_without_token(&state, query) {
        return refused;
    }
    json(
        StatusCode::OK,
        &SysStats::read(&state.metrics, state.version),
    )
}

/// The `/brokers` document: this node and every member it knows, down ones included.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct BrokersView {
    pub cluster: bool,
    pub node_id: Option<String>,
    /// Another live node was seen using this node's `-nid`.
    pub duplicate_node_id: bool,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct MemberView {
    pub node_id: String,
    pub gossip_addr: String,
    pub sync_addr: String,
    pub mqtt_port: u16,
    /// `up`, `suspect` or `down`.
    pub state: String,
    pub version: String,
    pub uptime_secs: u64,
    pub local: bool,
}

impl MemberView {
    fn new(identity: &NodeIdentity, state: MemberState, local: bool, now_ms: u64) -> MemberView {
        let state = match state {
            MemberState::Up => "up",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        };
        MemberView {
            node_id: identity.node_id.clone(),
            gossip_addr: identity.gossip.to_string(),
            sync_addr: identity.sync_addr().to_string(),
            mqtt_port: identity.mqtt_port,
            state: state.to_string(),
            // Without the sync versions gossip carries in it.
            version: identity.release().to_string(),
            uptime_secs: now_ms.saturating_sub(identity.boot_ms) / 1000,
            local,
        }
    }
}

impl BrokersView {
    pub fn read(members: Option<&Members>) -> BrokersView {
        let Some(members) = members else {
            return BrokersView {
                cluster: false,
                node_id: None,
                duplicate_node_id: false,
                members: Vec::new(),
            };
        };
        let now_ms = crate::cluster::membership::boot_ms();
        let local = members.local();
        let mut views = vec![MemberView::new(&local, MemberState::Up, true, now_ms)];
        views.extend(
            members
                .others()
                .iter()
                .map(|member| MemberView::new(&member.identity, member.state, false, now_ms)),
        );
        BrokersView {
            cluster: true,
            node_id: Some(local.node_id.clone()),
            duplicate_node_id: members.duplicate_seen(),
            members: views,
        }
    }
}

async fn brokers(State(state): State<Arc<HttpState>>, query: TokenQuery) -> Response {
    if let Some(refused) = refuse_without_token(&state, query) {
        return refused;
    }
    json(StatusCode::OK, &BrokersView::read(state.members.as_deref()))
}

/// `DELETE /clients/<client id>`: asks the connection that holds the session of that client id
/// (percent-decoded) to close. 204 when one was asked (it closes right after: an MQTT 5 client
/// is sent DISCONNECT 0x98, and the will is published as on any close but a DISCONNECT), 404
/// when no connection on this node holds that client id.
async fn kick_client(
    State(state): State<Arc<HttpState>>,
    query: TokenQuery,
    client_id: Result<Path<String>, PathRejection>,
) -> Response {
    if let Some(refused) = refuse_without_token(&state, query) {
        return refused;
    }
    if state.sys_token == DEFAULT_SYS_TOKEN {
        return json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({
                "error": "the -syst token is the documented default; set one of your own to disconnect clients"
            }),
        );
    }
    let Ok(Path(client_id)) = client_id else {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({ "error": "the client id is not UTF-8 once percent-decoded" }),
        );
    };
    match state
        .broker
        .sessions
        .kick(&client_id, KickReason::Administrative)
    {
        Kick::Asked => {
            state.metrics.admin_disconnects.inc();
            tracing::info!(
                client_id,
                "closing a client's connection on request (HTTP API)"
            );
            StatusCode::NO_CONTENT.into_response()
        }
        Kick::NotConnected => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({
                "error": "no connection holds this client id",
                "client_id": client_id,
            }),
        ),
        Kick::TakeoverUnderWay => json(
            StatusCode::CONFLICT,
            &serde_json::json!({
                "error": "a new connection is taking this client id over; ask again",
                "client_id": client_id,
            }),
        ),
    }
}

/// axum's `Json` needs a feature we do not enable; this is all it would do for us.
fn json(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(err) => {
            tracing::error!(error = %err, "cannot encode JSON response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Compares without an early exit, so response time does not reveal how much of a guessed
/// token was right. (The length is not secret.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    const TOKEN: &str = "s3cret";
    const IO_TIMEOUT: Duration = Duration::from_secs(10);

    struct TestServer {
        addr: std::net::SocketAddr,
        metrics: Arc<Metrics>,
        broker: Arc<Broker>,
        lifecycle: Arc<Lifecycle>,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<std::io::Result<()>>,
    }

    impl TestServer {
        async fn start() -> TestServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let metrics = Arc::new(Metrics::new());
            let lifecycle = Arc::new(Lifecycle::default());
            let broker = Arc::new(Broker::new(
                crate::config::Config::for_tests(),
                metrics.clone(),
                None,
                None,
            ));
            let state = HttpState {
                metrics: metrics.clone(),
                broker: broker.clone(),
                sys_token: TOKEN.to_string(),
                lifecycle: lifecycle.clone(),
                version: "9.9.9",
                members: None,
            };
            let (stop, stopped) = oneshot::channel::<()>();
            let limits = HttpLimits {
                max_connections: 32,
                header_timeout: Duration::from_secs(5),
            };
            let task = tokio::spawn(serve(listener, state, limits, async move {
                let _ = stopped.await;
            }));
            TestServer {
                addr,
                metrics,
                broker,
                lifecycle,
                stop: Some(stop),
                task,
            }
        }

        /// Sends `request` verbatim and returns (status, headers, body).
        async fn raw(&self, request: &str) -> (u16, String, String) {
            let exchange = async {
                let mut stream = TcpStream::connect(self.addr).await?;
                stream.write_all(request.as_bytes()).await?;
                let mut response = Vec::new();
                stream.read_to_end(&mut response).await?;
                std::io::Result::Ok(response)
            };
            let response = tokio::time::timeout(IO_TIMEOUT, exchange)
                .await
                .expect("response in time")
                .expect("HTTP exchange");
            let response = String::from_utf8(response).expect("UTF-8 response");
            let (head, body) = response.split_once("\r\n\r\n").expect("header end");
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .expect("status code");
            (status, head.to_ascii_lowercase(), body.to_string())
        }

        async fn get(&self, path: &str) -> (u16, String, String) {
            self.raw(&format!(
                "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
            ))
            .await
        }

        async fn delete(&self, path: &str) -> (u16, String, String) {
            self.raw(&format!(
                "DELETE {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
            ))
            .await
        }

        async fn stop(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            let result = tokio::time::timeout(IO_TIMEOUT, self.task)
                .await
                .expect("server stops in time")
                .expect("server task");
            result.expect("server result");
        }
    }

    #[tokio::test]
    async fn healthz_follows_readiness() {
        let server = TestServer::start().await;
        let (status, _, body) = server.get("/healthz").await;
        assert_eq!(status, 503);
        assert_eq!(body, "not ready");
        server.lifecycle.serving();
        let (status, _, body) = server.get("/healthz").await;
        assert_eq!(status, 200);
        assert_eq!(body, "ok");
        server.stop().await;
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_text() {
        let server = TestServer::start().await;
        server.metrics.connections.set(3);
        let (status, head, body) = server.get("/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.contains(&format!("content-type: {OPENMETRICS_CONTENT_TYPE}")),
            "{head}"
        );
        assert!(body.contains("coolpy7_connections 3"), "{body}");
        assert!(body.trim_end().ends_with("# EOF"), "{body}");
        server.stop().await;
    }

    #[tokio::test]
    async fn sys_requires_the_token() {
        let server = TestServer::start().await;
        for path in [
            "/sys",
            "/sys?token=",
            "/sys?token=wrong",
            "/sys?token=s3cre",
            "/sys?token=s3crett",
            "/sys?token=%ZZ",
            "/sys?tok=s3cret",
        ] {
            let (status, head, body) = server.get(path).await;
            assert_eq!(status, 401, "{path}");
            assert!(head.contains("content-type: application/json"), "{path}");
            let error: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
            assert!(error["error"].is_string(), "{path}: {body}");
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn sys_reports_the_metrics() {
        let server = TestServer::start().await;
        let m = &server.metrics;
        m.connections.set(2);
        m.sessions.set(5);
        m.subscriptions.set(7);
        m.retained.set(1);
        m.queued.set(4);
        m.record_received(QoS::AtMostOnce, 10);
        m.record_received(QoS::ExactlyOnce, 20);
        m.messages_sent[1].inc_by(6);
        m.bytes_received.inc_by(100);
        m.bytes_sent.inc_by(200);
        m.dropped(DropReason::QueueFull).inc_by(3);

        let (status, head, body) = server.get("/sys?token=s3cret").await;
        assert_eq!(status, 200);
        assert!(head.contains("content-type: application/json"), "{head}");
        let stats: SysStats = serde_json::from_str(&body).expect("stats JSON");
        assert_eq!(stats.version, "9.9.9");
        assert_eq!(stats.connections, 2);
        assert_eq!(stats.sessions, 5);
        assert_eq!(stats.subscriptions, 7);
        assert_eq!(stats.retained, 1);
        assert_eq!(stats.queued, 4);
        assert_eq!(
            stats.messages_received,
            PerQosStats {
                total: 2,
                qos0: 1,
                qos1: 0,
                qos2: 1
            }
        );
        assert_eq!(stats.messages_sent.total, 6);
        assert_eq!(stats.payload_bytes_received.total, 30);
        assert_eq!(stats.bytes_received, 100);
        assert_eq!(stats.bytes_sent, 200);
        assert_eq!(stats.dropped.get("queue_full"), Some(&3));
        assert_eq!(stats.dropped.get("offline_qos0"), Some(&0));
        assert_eq!(stats.dropped.get("no_subscribers"), Some(&0));
        server.stop().await;
    }

    #[tokio::test]
    async fn brokers_requires_the_token_and_says_when_there_is_no_cluster() {
        let server = TestServer::start().await;
        assert_eq!(server.get("/brokers").await.0, 401);
        assert_eq!(server.get("/brokers?token=wrong").await.0, 401);
        let (status, _, body) = server.get(&format!("/brokers?token={TOKEN}")).await;
        assert_eq!(status, 200);
        let view: BrokersView = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            view,
            BrokersView {
                cluster: false,
                node_id: None,
                duplicate_node_id: false,
                members: Vec::new()
            }
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn readyz_follows_the_listener_outside_cluster_mode() {
        let server = TestServer::start().await;
        assert_eq!(server.get("/readyz").await.0, 503);
        server.lifecycle.serving();
        assert_eq!(server.get("/readyz").await.0, 200);
        // A draining node is alive but takes no clients.
        server.lifecycle.draining();
        let (status, _, body) = server.get("/readyz").await;
        assert_eq!((status, body.as_str()), (503, "draining"));
        assert_eq!(server.get("/healthz").await.0, 200);
        server.stop().await;
    }

    #[tokio::test]
    async fn unknown_paths_methods_and_garbage_are_refused() {
        let server = TestServer::start().await;
        assert_eq!(server.get("/").await.0, 404);
        assert_eq!(server.get("/members").await.0, 404);
        assert_eq!(server.get("/healthz/x").await.0, 404);
        let post = "POST /sys?token=s3cret HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        assert_eq!(server.raw(post).await.0, 405);
        assert_eq!(server.raw("NOT HTTP AT ALL\r\n\r\n").await.0, 400);
        // The server survived all of it.
        server.lifecycle.serving();
        assert_eq!(server.get("/healthz").await.0, 200);
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_does_not_wait_for_idle_connections() {
        let server = TestServer::start().await;
        // An idle keep-alive connection must not delay shutdown.
        let mut idle = TcpStream::connect(server.addr).await.expect("connect");
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(IO_TIMEOUT, idle.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0);
        let started = std::time::Instant::now();
        server.stop().await;
        assert!(started.elapsed() < SHUTDOWN_GRACE + Duration::from_secs(2));
    }

    #[tokio::test]
    async fn delete_client_requires_the_token() {
        let server = TestServer::start().await;
        let holder = crate::session::Holder::new(1);
        let _claimed = server
            .broker
            .sessions
            .claim("c1", false, &holder, &server.broker.router)
            .await
            .expect("claim");
        for path in [
            "/clients/c1",
            "/clients/c1?token=",
            "/clients/c1?token=wrong",
            "/clients/c1?token=s3crett",
            "/clients/c1?tok=s3cret",
        ] {
            let (status, head, body) = server.delete(path).await;
            assert_eq!(status, 401, "{path}");
            assert!(head.contains("content-type: application/json"), "{path}");
            let error: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
            assert!(error["error"].is_string(), "{path}: {body}");
        }
        assert_eq!(holder.kick_reason(), None);
        assert_eq!(server.metrics.admin_disconnects.get(), 0);
        server.stop().await;
    }

    #[tokio::test]
    async fn delete_client_kicks_the_holder_of_a_percent_decoded_client_id() {
        let server = TestServer::start().await;
        let broker = &server.broker;
        // Client ids with '/', a space and non-ASCII characters, sent encoded and not.
        let cases = [
            ("/clients/plain?token=s3cret", "plain"),
            ("/clients/a/b/c?token=s3cret", "a/b/c"),
            ("/clients/x%2Fy?token=s3cret", "x/y"),
            ("/clients/sp%20ace?token=s3cret", "sp ace"),
            ("/clients/%E5%AE%A2%E6%88%B7?token=s3cret", "客户"),
            ("/clients//lead?token=s3cret", "/lead"),
        ];
        let mut holders = Vec::new();
        for (n, (_, client_id)) in cases.iter().enumerate() {
            let holder = crate::session::Holder::new(n as u64);
            let claimed = broker
                .sessions
                .claim(client_id, false, &holder, &broker.router)
                .await
                .expect("claim");
            holders.push((holder, claimed));
        }
        for (n, (path, client_id)) in cases.iter().enumerate() {
            let (status, _, body) = server.delete(path).await;
            assert_eq!((status, body.as_str()), (204, ""), "{path}");
            assert_eq!(
                holders[n].0.kick_reason(),
                Some(KickReason::Administrative),
                "{path} -> {client_id:?}"
            );
        }
        assert_eq!(server.metrics.admin_disconnects.get(), cases.len() as u64);
        server.stop().await;
    }

    #[tokio::test]
    async fn delete_client_answers_404_when_nobody_holds_it() {
        let server = TestServer::start().await;
        let holder = crate::session::Holder::new(1);
        let _claimed = server
            .broker
            .sessions
            .claim("held", false, &holder, &server.broker.router)
            .await
            .expect("claim");
        for path in [
            "/clients/nobody?token=s3cret",
            "/clients/held/x?token=s3cret",
            "/clients/HELD?token=s3cret",
        ] {
            let (status, head, body) = server.delete(path).await;
            assert_eq!(status, 404, "{path}");
            assert!(head.contains("content-type: application/json"), "{path}");
            let error: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
            assert!(error["error"].is_string(), "{path}: {body}");
        }
        // Not UTF-8 once decoded: refused, not a panic.
        assert_eq!(server.delete("/clients/%FF?token=s3cret").await.0, 400);
        // Only DELETE acts.
        assert_eq!(server.get("/clients/held?token=s3cret").await.0, 405);
        assert_eq!(holder.kick_reason(), None);
        assert_eq!(server.metrics.admin_disconnects.get(), 0);
        server.stop().await;
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
