//! The HTTP authentication service (`-as 2 -ha URL -ht TOKEN`), Coolpy7's "extension
//! service": for each CONNECT the broker asks an HTTP service whether the client may connect.
//!
//! [`HttpHook::check`] first looks in a small cache of recent verdicts, then POSTs the client's
//! credentials to the service and turns its answer into a [`HookVerdict`]; the whole exchange
//! is bounded by one timeout and the answer's size by a limit, so a slow or hostile service
//! costs a CONNECT at most `timeout` and 64 KiB. Connections to the service are pooled (HTTP/1
//! keep-alive).
//!
//! # The contract
//!
//! The broker sends `POST <url>` with `Content-Type: application/json`, the header
//! `Authorization: Bearer <token>` when `-ht` is set, and the body
//!
//! ```json
//! {"clientid": "...", "username": "..." | null, "password": "..." | null,
//!  "password_base64": true | false, "peerhost": "1.2.3.4", "peerport": 1234,
//!  "protocol": 4, "listener": "tcp"}
//! ```
//!
//! `password` is the CONNECT password as text, or base64-encoded (standard alphabet, padded)
//! with `password_base64: true` when it is not UTF-8. `peerhost` is the client's IP address
//! (an IPv4-mapped IPv6 address as IPv4), `protocol` the MQTT protocol level (3 for 3.1, 4 for
//! 3.1.1, 5 for 5.0), `listener` the name of the listener the client came through.
//!
//! The service answers HTTP 200 with the JSON
//!
//! ```json
//! {"result": "allow" | "deny",
//!  "acl": {"pub": ["..."], "sub": ["..."], "all": ["..."]},
//!  "expire_at": 1767225600}
//! ```
//!
//! where `acl` (optional) lists the topic filters the client may publish to (`pub`), subscribe
//! to (`sub`) or both (`all`), `%u` and `%c` standing for its username and client id, everything
//! else denied to it; and `expire_at` (optional, Unix seconds) is when the broker closes the
//! connection (an `expire_at` already past denies). Without `acl` the broker's own rules apply.
//!
//! The client is refused when the service denies (`"result": "deny"`, or a 4xx status other
//! than 408 and 429), and also, the service being unavailable, on any other status, a body
//! that is not that JSON, an `acl` entry that is not a valid topic filter, a body over 64 KiB,
//! a connection error, or no complete answer within the timeout (`-as 2` fails closed).
//!
//! # The cache
//!
//! Allow and deny verdicts (never an unavailable service) are kept for `cache_ttl`, keyed by
//! the client id, username, password, peer IP address, protocol and listener: the key is an
//! HMAC-SHA-256 of those fields, each length-prefixed so that no two requests share a key,
//! under a random per-process key, so that the cache holds no password nor anything to guess
//! one from offline. An allow is not reused past its `expire_at`. At most `cache_capacity`
//! verdicts are kept: when full, expired ones are dropped, then the oldest. Identical requests
//! made while the first is still in flight each go to the service (no request coalescing): a
//! client that reconnects in a tight loop costs one request per attempt until an answer is
//! cached.
//!
//! Neither the password nor the `-ht` token is ever logged or put in a verdict, an error or
//! `Debug` output.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::ClientAcl;

/// The largest answer read from the service.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How long an idle pooled connection to the service is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks the HTTP authentication service about CONNECTs. Shared by all connections.
pub struct HttpHook {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    /// `Bearer <token>`, marked sensitive (hyper then keeps it out of its own output).
    authorization: Option<HeaderValue>,
    timeout: Duration,
    cache: Option<VerdictCache>,
}

/// What the broker knows of a client at CONNECT, as sent to the service.
#[derive(Clone, Copy)]
pub struct HookRequest<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer: SocketAddr,
    /// The MQTT protocol level: 3, 4 or 5.
    pub protocol: u8,
    /// The name of the listener the client came through.
    pub listener: &'a str,
}

impl fmt::Debug for HookRequest<'_> {
    /// Everything but the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookRequest")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.map(|_| "<redacted>"))
            .field("peer", &self.peer)
            .field("protocol", &self.protocol)
            .field("listener", &self.listener)
            .finish()
    }
}

/// The service's decision about one CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookVerdict {
    /// The client may connect, with these rules (`None`: the broker's own) until `expires_at`
    /// (`None`: for as long as it stays connected).
    Allow {
        acl: Option<ClientAcl>,
        expires_at: Option<SystemTime>,
    },
    /// The service refused the client.
    Deny,
    /// The service could not be asked or gave no usable answer; the client is refused. The
    /// reason is for the broker's log and carries no credential.
    Unavailable(String),
}

/// Why the hook cannot be set up from `-ha` and `-ht`. Neither the URL (it might carry
/// credentials) nor the token is repeated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error("the authentication service URL is invalid: {0}")]
    InvalidUrl(&'static str),
    #[error("https:// authentication service URLs are not supported yet; use http://")]
    HttpsNotSupported,
    #[error("the authentication service token is not a valid HTTP header value")]
    InvalidToken,
}

impl HttpHook {
    /// A hook asking the service at `url` (`http://host:port/path`, or a bare `host:port` as
    /// Coolpy7's `-ha` took, meaning `http://host:port/`), sending `token` as a bearer token,
    /// waiting at most `timeout` for each answer, and caching verdicts for `cache_ttl` (zero:
    /// no cache), at most `cache_capacity` of them.
    pub fn new(
        url: &str,
        token: Option<String>,
        timeout: Duration,
        cache_ttl: Duration,
        cache_capacity: usize,
    ) -> Result<HttpHook, HookError> {
        let uri = service_uri(url)?;
        let authorization = match token {
            Some(token) => {
                if token.is_empty() {
                    return Err(HookError::InvalidToken);
                }
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| HookError::InvalidToken)?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };

        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);

        let cache = (!cache_ttl.is_zero() && cache_capacity > 0)
            .then(|| VerdictCache::new(cache_ttl, cache_capacity));
        Ok(HttpHook {
            client,
            uri,
            authorization,
            timeout,
            cache,
        })
    }

    /// Whether the client described by `request` may connect: from the cache, or else from the
    /// service (see the module doc for the exchange).
    pub async fn check(&self, request: &HookRequest<'_>) -> HookVerdict {
        let cache_key = self.cache.as_ref().map(|cache| cache.key(request));
        if let (Some(cache), Some(key)) = (&self.cache, &cache_key) {
            if let Some(verdict) = cache.get(key, Instant::now(), SystemTime::now()) {
                return verdict;
            }
        }

        let verdict = match tokio::time::timeout(self.timeout, self.ask(request)).await {
            Ok(verdict) => verdict,
            Err(_) => HookVerdict::Unavailable(format!(
                "no answer from the authentication service within {:?}",
                self.timeout
            )),
        };

        if let (Some(cache), Some(key)) = (&self.cache, cache_key) {
            cache.insert(key, &verdict, Instant::now());
        }
        verdict
    }

    /// One exchange with the service, unbounded in time (the caller bounds it).
    async fn ask(&self, request: &HookRequest<'_>) -> HookVerdict {
        let body = match serde_json::to_vec(&RequestBody::new(request)) {
            Ok(body) => body,
            Err(_) => return HookVerdict::Unavailable("could not encode the request".into()),
        };
        let mut builder = Request::post(self.uri.clone()).header(CONTENT_TYPE, "application/json");
        if let Some(authorization) = &self.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        let http_request = match builder.body(Full::new(Bytes::from(body))) {
            Ok(http_request) => http_request,
            Err(_) => return HookVerdict::Unavailable("could not build the request".into()),
        };

        let response = match self.client.request(http_request).await {
            Ok(response) => response,
            Err(error) => {
                return HookVerdict::Unavailable(format!(
                    "authentication service request failed: {}",
                    error_chain(&error)
                ))
            }
        };

        let status = response.status();
        if status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS {
            return HookVerdict::Unavailable(format!("authentication service answered {status}"));
        }
        if status.is_client_error() {
            return HookVerdict::Deny;
        }
        if status != StatusCode::OK {
            return HookVerdict::Unavailable(format!("authentication service answered {status}"));
        }

        // Refused before reading when announced, and counted while reading when not (chunked).
        let announced = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok())
            .and_then(|length| length.parse::<u64>().ok());
        if announced.is_some_and(|length| length > MAX_ANSWER_BYTES as u64) {
            return answer_too_large();
        }
        let body = match Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                return answer_too_large()
            }
            Err(error) => {
                return HookVerdict::Unavailable(format!(
                    "reading the authentication service's answer failed: {}",
                    error_chain(error.as_ref())
                ))
            }
        };
        parse_answer(&body, SystemTime::now())
    }
}

impl fmt::Debug for HttpHook {
    /// The token is not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpHook")
            .field("uri", &self.uri)
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field(
                "cache",
                &self.cache.as_ref().map(|cache| (cache.ttl, cache.capacity)),
            )
            .finish()
    }
}

/// `-ha` as an `http://` URI with a path.
fn service_uri(url: &str) -> Result<Uri, HookError> {
    let with_scheme = match url.split_once("://") {
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            return Err(HookError::HttpsNotSupported)
        }
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("http") => url.to_owned(),
        Some(_) => return Err(HookError::InvalidUrl("the scheme must be http://")),
        None => format!("http://{url}"),
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|_| HookError::InvalidUrl("not host:port or http://host:port/path"))?;
    let authority = uri
        .authority()
        .ok_or(HookError::InvalidUrl("no host"))?
        .clone();
    if authority.host().is_empty() {
        return Err(HookError::InvalidUrl("no host"));
    }
    if authority.as_str().contains('@') {
        return Err(HookError::InvalidUrl(
            "credentials in the URL are not sent; give a token with -ht",
        ));
    }
    let path_and_query = uri.path_and_query().map_or("/", |path| path.as_str());
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(if path_and_query.is_empty() {
            "/"
        } else {
            path_and_query
        })
        .build()
        .map_err(|_| HookError::InvalidUrl("not host:port or http://host:port/path"))
}

fn answer_too_large() -> HookVerdict {
    HookVerdict::Unavailable(format!(
        "the authentication service's answer is over {MAX_ANSWER_BYTES} bytes"
    ))
}

/// An error and its sources, for a log line (hyper's top-level errors say little alone).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The request body of the contract.
#[derive(Serialize)]
struct RequestBody<'a> {
    clientid: &'a str,
    username: Option<&'a str>,
    password: Option<String>,
    password_base64: bool,
    peerhost: String,
    peerport: u16,
    protocol: u8,
    listener: &'a str,
}

impl<'a> RequestBody<'a> {
    fn new(request: &HookRequest<'a>) -> RequestBody<'a> {
        let (password, password_base64) = match request.password {
            None => (None, false),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => (Some(text.to_owned()), false),
                Err(_) => (
                    Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                    true,
                ),
            },
        };
        RequestBody {
            clientid: request.client_id,
            username: request.username,
            password,
            password_base64,
            peerhost: request.peer.ip().to_canonical().to_string(),
            peerport: request.peer.port(),
            protocol: request.protocol,
            listener: request.listener,
        }
    }
}

/// The answer body of the contract.
#[derive(Deserialize)]
struct Answer {
    result: String,
    #[serde(default)]
    acl: Option<ClientAcl>,
    #[serde(default)]
    expire_at: Option<f64>,
}

/// A 200 answer's body as a verdict, at `now`. Nothing of the body is quoted (it might echo
/// the request).
fn parse_answer(body: &[u8], now: SystemTime) -> HookVerdict {
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
        return HookVerdict::Unavailable(
            "the authentication service's answer is not the expected JSON".into(),
        );
    };
    match answer.result.as_str() {
        "allow" => {}
        "deny" => return HookVerdict::Deny,
        _ => {
            return HookVerdict::Unavailable(
                "the authentication service's result is neither \"allow\" nor \"deny\"".into(),
            )
        }
    }
    if let Some(acl) = &answer.acl {
        if let Err(reason) = acl.validate() {
            return HookVerdict::Unavailable(format!(
                "the authentication service's answer has an invalid acl: {reason}"
            ));
        }
    }
    let expires_at = match answer.expire_at {
        None => None,
        Some(seconds) => match Duration::try_from_secs_f64(seconds)
            .ok()
            .and_then(|since_epoch| UNIX_EPOCH.checked_add(since_epoch))
        {
            Some(expires_at) => Some(expires_at),
            None => {
                return HookVerdict::Unavailable(
                    "the authentication service's expire_at is not a time (Unix seconds)".into(),
                )
            }
        },
    };
    if expires_at.is_some_and(|expires_at| expires_at <= now) {
        return HookVerdict::Deny;
    }
    HookVerdict::Allow {
        acl: answer.acl,
        expires_at,
    }
}

/// Recent allow and deny verdicts, by a keyed hash of the request (see the module doc).
struct VerdictCache {
    ttl: Duration,
    capacity: usize,
    /// The HMAC key, random per process.
    hash_key: [u8; 32],
    entries: Mutex<HashMap<[u8; 32], CachedVerdict>>,
}

struct CachedVerdict {
    stored_at: Instant,
    verdict: HookVerdict,
}

impl VerdictCache {
    fn new(ttl: Duration, capacity: usize) -> VerdictCache {
        VerdictCache {
            ttl,
            capacity,
            hash_key: rand::random(),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn key(&self, request: &HookRequest<'_>) -> [u8; 32] {
        // Each field is length-prefixed, and absent fields differ from empty ones, so that two
        // different requests never feed the hash the same bytes.
        fn field(mac: &mut Hmac<Sha256>, value: Option<&[u8]>) {
            match value {
                None => mac.update(&[0]),
                Some(bytes) => {
                    mac.update(&[1]);
                    mac.update(&(bytes.len() as u64).to_be_bytes());
                    mac.update(bytes);
                }
            }
        }
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(&self.hash_key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        };
        let peer_ip = request.peer.ip().to_canonical().to_string();
        field(&mut mac, Some(request.client_id.as_bytes()));
        field(&mut mac, request.username.map(str::as_bytes));
        field(&mut mac, request.password);
        field(&mut mac, Some(peer_ip.as_bytes()));
        field(&mut mac, Some(&[request.protocol]));
        field(&mut mac, Some(request.listener.as_bytes()));
        mac.finalize().into_bytes().into()
    }

    /// The verdict stored for `key` less than `ttl` before `now`, unless it is an allow whose
    /// `expires_at` has passed at `wall_now`.
    fn get(&self, key: &[u8; 32], now: Instant, wall_now: SystemTime) -> Option<HookVerdict> {
        let entries = self.entries.lock();
        let cached = entries.get(key)?;
        if now.saturating_duration_since(cached.stored_at) >= self.ttl {
            return None;
        }
        if let HookVerdict::Allow {
            expires_at: Some(expires_at),
            ..
        } = cached.verdict
        {
            if expires_at <= wall_now {
                return None;
            }
        }
        Some(cached.verdict.clone())
    }

    /// Keeps an allow or a deny; an unavailable service is asked again next time.
    fn insert(&self, key: [u8; 32], verdict: &HookVerdict, now: Instant) {
        if matches!(verdict, HookVerdict::Unavailable(_)) {
            return;
        }
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            // Linear scans, only when full: each insert follows an HTTP request, which costs
            // far more than walking the map.
            entries.retain(|_, cached| now.saturating_duration_since(cached.stored_at) < self.ttl);
            if entries.len() >= self.capacity {
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, cached)| cached.stored_at)
                    .map(|(key, _)| *key);
                if let Some(oldest) = oldest {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(
            key,
            CachedVerdict {
                stored_at: now,
                verdict: verdict.clone(),
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use serde_json::{json, Value};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// One request as the test service received it.
    #[derive(Debug, Clone)]
    struct Received {
        request_line: String,
        /// Names lowercased.
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Received {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        }

        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    /// What the test service does with a request.
    enum Reply {
        /// These bytes (a whole HTTP response), then close.
        Raw(Vec<u8>),
        /// These bytes, then nothing, holding the connection open.
        ThenSilence(Vec<u8>),
        /// Nothing, holding the connection open.
        Silence,
    }

    fn ok_json(body: &str) -> Reply {
        status(200, body)
    }

    fn status(code: u16, body: &str) -> Reply {
        Reply::Raw(
            format!(
                "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    }

    /// A small HTTP/1.1 service on 127.0.0.1 answering every request with `reply`, recording
    /// what it received.
    struct TestService {
        address: SocketAddr,
        received: Arc<Mutex<Vec<Received>>>,
        count: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl TestService {
        async fn start(reply: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> TestService {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let received = Arc::new(Mutex::new(Vec::new()));
            let count = Arc::new(AtomicUsize::new(0));
            let reply = Arc::new(reply);
            let task = tokio::spawn({
                let received = received.clone();
                let count = count.clone();
                async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        let received = received.clone();
                        let count = count.clone();
                        let reply = reply.clone();
                        tokio::spawn(async move {
                            let mut stream = stream;
                            let Some(request) = read_request(&mut stream).await else {
                                return;
                            };
                            count.fetch_add(1, Ordering::SeqCst);
                            received.lock().push(request.clone());
                            match reply(&request) {
                                Reply::Raw(bytes) => {
                                    let _ = stream.write_all(&bytes).await;
                                    let _ = stream.shutdown().await;
                                }
                                Reply::ThenSilence(bytes) => {
                                    let _ = stream.write_all(&bytes).await;
                                    tokio::time::sleep(Duration::from_secs(30)).await;
                                }
                                Reply::Silence => {
                                    tokio::time::sleep(Duration::from_secs(30)).await;
                                }
                            }
                        });
                    }
                }
            });
            TestService {
                address,
                received,
                count,
                task,
            }
        }

        fn url(&self) -> String {
            format!("http://{}/auth", self.address)
        }

        fn requests(&self) -> usize {
            self.count.load(Ordering::SeqCst)
        }

        fn last(&self) -> Received {
            self.received.lock().last().cloned().unwrap()
        }
    }

    impl Drop for TestService {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn read_request(stream: &mut TcpStream) -> Option<Received> {
        let mut data = Vec::new();
        let mut buffer = [0u8; 4096];
        let header_end = loop {
            if let Some(end) = data.windows(4).position(|window| window == b"\r\n\r\n") {
                break end;
            }
            let read = stream.read(&mut buffer).await.ok()?;
            if read == 0 {
                return None;
            }
            data.extend_from_slice(&buffer[..read]);
        };
        let head = String::from_utf8(data[..header_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap().to_owned();
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        let length: usize = headers
            .iter()
            .find(|(name, _)| name == "content-length")
            .map_or(0, |(_, value)| value.parse().unwrap());
        let mut body = data[header_end + 4..].to_vec();
        while body.len() < length {
            let read = stream.read(&mut buffer).await.ok()?;
            if read == 0 {
                return None;
            }
            body.extend_from_slice(&buffer[..read]);
        }
        Some(Received {
            request_line,
            headers,
            body,
        })
    }

    fn request<'a>(password: &'a [u8]) -> HookRequest<'a> {
        HookRequest {
            client_id: "sensor-1",
            username: Some("alice"),
            password: Some(password),
            peer: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 40123),
            protocol: 4,
            listener: "tcp",
        }
    }

    fn hook(url: &str, token: Option<&str>, cache_ttl: Duration) -> HttpHook {
        HttpHook::new(
            url,
            token.map(str::to_owned),
            Duration::from_secs(5),
            cache_ttl,
            1_000,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn allow_with_acl_and_expiry() {
        let service = TestService::start(|_| {
            ok_json(
                r#"{"result": "allow", "acl": {"pub": ["t/%c"], "sub": ["t/#"], "all": ["x/1"]},
                    "expire_at": 4102444800}"#,
            )
        })
        .await;
        let verdict = hook(&service.url(), None, Duration::ZERO)
            .check(&request(b"pw"))
            .await;
        assert_eq!(
            verdict,
            HookVerdict::Allow {
                acl: Some(ClientAcl {
                    publish: vec!["t/%c".into()],
                    subscribe: vec!["t/#".into()],
                    all: vec!["x/1".into()],
                }),
                expires_at: Some(UNIX_EPOCH + Duration::from_secs(4_102_444_800)),
            }
        );
    }

    #[tokio::test]
    async fn allow_without_acl_or_expiry() {
        let service = TestService::start(|_| ok_json(r#"{"result": "allow"}"#)).await;
        let verdict = hook(&service.url(), None, Duration::ZERO)
            .check(&request(b"pw"))
            .await;
        assert_eq!(
            verdict,
            HookVerdict::Allow {
                acl: None,
                expires_at: None
            }
        );
    }

    #[tokio::test]
    async fn deny_and_client_errors_deny() {
        for reply in [
            r#"{"result": "deny"}"#,
            r#"{"result": "allow", "expire_at": 1}"#,
        ] {
            let body = reply.to_owned();
            let service = TestService::start(move |_| ok_json(&body)).await;
            let verdict = hook(&service.url(), None, Duration::ZERO)
                .check(&request(b"pw"))
                .await;
            assert_eq!(verdict, HookVerdict::Deny, "{reply}");
        }
        for code in [400, 401, 403, 404] {
            let service = TestService::start(move |_| status(code, "")).await;
            let verdict = hook(&service.url(), None, Duration::ZERO)
                .check(&request(b"pw"))
                .await;
            assert_eq!(verdict, HookVerdict::Deny, "{code}");
        }
    }

    #[tokio::test]
    async fn server_errors_and_bad_answers_are_unavailable() {
        let replies: Vec<(u16, &str)> = vec![
            (500, r#"{"result": "allow"}"#),
            (503, ""),
            (429, ""),
            (204, ""),
            (301, ""),
            (200, ""),
            (200, "allow"),
            (200, r#"{"result": "ignore"}"#),
            (200, r#"{"result": "allow", "acl": {"sub": ["a/#/b"]}}"#),
            (200, r#"{"result": "allow", "acl": {"sub": "a/b"}}"#),
            (200, r#"{"result": "allow", "expire_at": "soon"}"#),
            (200, r#"{"result": "allow", "expire_at": -5}"#),
        ];
        for (code, body) in replies {
            let body = body.to_owned();
            let service = TestService::start(move |_| status(code, &body)).await;
            let verdict = hook(&service.url(), None, Duration::from_secs(60))
                .check(&request(b"pw"))
                .await;
            assert!(
                matches!(verdict, HookVerdict::Unavailable(_)),
                "{code}: {verdict:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_silent_service_is_unavailable_within_the_timeout() {
        let service = TestService::start(|_| Reply::Silence).await;
        let hook = HttpHook::new(
            &service.url(),
            None,
            Duration::from_millis(200),
            Duration::ZERO,
            10,
        )
        .unwrap();
        let started = Instant::now();
        let verdict = tokio::time::timeout(Duration::from_secs(5), hook.check(&request(b"pw")))
            .await
            .unwrap();
        assert!(
            matches!(verdict, HookVerdict::Unavailable(_)),
            "{verdict:?}"
        );
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        assert_eq!(service.requests(), 1);
    }

    #[tokio::test]
    async fn a_slow_body_is_bounded_by_the_timeout() {
        // Headers promptly, then a body that never completes.
        let service = TestService::start(|_| {
            Reply::ThenSilence(
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"result\"".to_vec(),
            )
        })
        .await;
        let hook = HttpHook::new(
            &service.url(),
            None,
            Duration::from_millis(200),
            Duration::ZERO,
            10,
        )
        .unwrap();
        let started = Instant::now();
        let verdict = tokio::time::timeout(Duration::from_secs(5), hook.check(&request(b"pw")))
            .await
            .unwrap();
        assert!(
            matches!(verdict, HookVerdict::Unavailable(ref reason) if reason.contains("within")),
            "{verdict:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(190));
    }

    #[tokio::test]
    async fn connection_refused_is_unavailable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let hook = hook(&address.to_string(), None, Duration::from_secs(60));
        let verdict = tokio::time::timeout(Duration::from_secs(5), hook.check(&request(b"pw")))
            .await
            .unwrap();
        assert!(
            matches!(verdict, HookVerdict::Unavailable(ref reason) if reason.contains("refused")),
            "{verdict:?}"
        );
        // Not cached: still no entry.
        assert_eq!(hook.cache.as_ref().unwrap().len(), 0);
    }

    #[tokio::test]
    async fn an_oversized_answer_is_unavailable() {
        let padding = "x".repeat(MAX_ANSWER_BYTES);
        let announced = format!(r#"{{"result": "allow", "pad": "{padding}"}}"#);
        let service = TestService::start(move |_| ok_json(&announced)).await;
        let verdict = hook(&service.url(), None, Duration::ZERO)
            .check(&request(b"pw"))
            .await;
        assert!(matches!(verdict, HookVerdict::Unavailable(ref reason) if reason.contains("over")));

        // Chunked, so that the size is only known while reading.
        let service = TestService::start(|_| {
            let mut response =
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                    .to_vec();
            let chunk = vec![b' '; 16 * 1024];
            for _ in 0..5 {
                response.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                response.extend_from_slice(&chunk);
                response.extend_from_slice(b"\r\n");
            }
            response.extend_from_slice(b"0\r\n\r\n");
            Reply::Raw(response)
        })
        .await;
        let verdict = hook(&service.url(), None, Duration::ZERO)
            .check(&request(b"pw"))
            .await;
        assert!(matches!(verdict, HookVerdict::Unavailable(ref reason) if reason.contains("over")));
    }

    #[tokio::test]
    async fn the_request_is_as_documented() {
        let service = TestService::start(|_| ok_json(r#"{"result": "allow"}"#)).await;
        let with_token = hook(&service.url(), Some("s3cr3t-token"), Duration::ZERO);
        with_token.check(&request(b"p\"w")).await;
        let received = service.last();
        assert_eq!(received.request_line, "POST /auth HTTP/1.1");
        assert_eq!(received.header("content-type"), Some("application/json"));
        assert_eq!(
            received.header("authorization"),
            Some("Bearer s3cr3t-token")
        );
        assert_eq!(
            received.json(),
            json!({
                "clientid": "sensor-1", "username": "alice", "password": "p\"w",
                "password_base64": false, "peerhost": "10.1.2.3", "peerport": 40123,
                "protocol": 4, "listener": "tcp"
            })
        );

        // No token: no Authorization. A password that is not UTF-8 goes base64-encoded; no
        // username or password: null. An IPv4-mapped peer is shown as IPv4.
        let without_token = hook(&service.url(), None, Duration::ZERO);
        let mut binary = request(&[0xff, 0x00, 0x80]);
        binary.username = None;
        binary.protocol = 5;
        binary.listener = "wss";
        binary.peer = SocketAddr::new(
            IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped()),
            1883,
        );
        without_token.check(&binary).await;
        let received = service.last();
        assert_eq!(received.header("authorization"), None);
        assert_eq!(
            received.json(),
            json!({
                "clientid": "sensor-1", "username": null, "password": "/wCA",
                "password_base64": true, "peerhost": "192.0.2.7", "peerport": 1883,
                "protocol": 5, "listener": "wss"
            })
        );

        let mut anonymous = request(b"");
        anonymous.password = None;
        anonymous.peer = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 2);
        without_token.check(&anonymous).await;
        let body = service.last().json();
        assert_eq!(body["password"], Value::Null);
        assert_eq!(body["password_base64"], json!(false));
        assert_eq!(body["peerhost"], json!("::1"));
    }

    #[tokio::test]
    async fn the_cache_answers_identical_requests() {
        let service = TestService::start(|_| ok_json(r#"{"result": "allow"}"#)).await;
        let hook = hook(&service.url(), None, Duration::from_secs(60));
        let first = hook.check(&request(b"pw")).await;
        let second = hook.check(&request(b"pw")).await;
        assert_eq!(first, second);
        assert_eq!(service.requests(), 1);

        // Any field that differs misses.
        hook.check(&request(b"other")).await;
        assert_eq!(service.requests(), 2);
        let mut other_peer = request(b"pw");
        other_peer.peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 4)), 40123);
        hook.check(&other_peer).await;
        assert_eq!(service.requests(), 3);
        // Only the port differs: a hit.
        let mut other_port = request(b"pw");
        other_port.peer.set_port(50000);
        hook.check(&other_port).await;
        assert_eq!(service.requests(), 3);
    }

    #[tokio::test]
    async fn the_cache_keeps_denials_but_not_unavailability() {
        let answers = Arc::new(AtomicUsize::new(0));
        let service = TestService::start({
            let answers = answers.clone();
            move |_| match answers.fetch_add(1, Ordering::SeqCst) {
                0 => status(500, ""),
                _ => ok_json(r#"{"result": "deny"}"#),
            }
        })
        .await;
        let hook = hook(&service.url(), None, Duration::from_secs(60));
        assert!(matches!(
            hook.check(&request(b"pw")).await,
            HookVerdict::Unavailable(_)
        ));
        assert_eq!(hook.check(&request(b"pw")).await, HookVerdict::Deny);
        assert_eq!(hook.check(&request(b"pw")).await, HookVerdict::Deny);
        assert_eq!(service.requests(), 2);
    }

    #[tokio::test]
    async fn the_cache_expires_after_its_ttl() {
        let service = TestService::start(|_| ok_json(r#"{"result": "allow"}"#)).await;
        let hook = hook(&service.url(), None, Duration::from_millis(100));
        hook.check(&request(b"pw")).await;
        hook.check(&request(b"pw")).await;
        assert_eq!(service.requests(), 1);
        tokio::time::sleep(Duration::from_millis(150)).await;
        hook.check(&request(b"pw")).await;
        assert_eq!(service.requests(), 2);
    }

    #[tokio::test]
    async fn a_zero_ttl_disables_the_cache() {
        let service = TestService::start(|_| ok_json(r#"{"result": "allow"}"#)).await;
        let hook = hook(&service.url(), None, Duration::ZERO);
        hook.check(&request(b"pw")).await;
        hook.check(&request(b"pw")).await;
        assert_eq!(service.requests(), 2);
    }

    fn allow_until(expires_at: Option<SystemTime>) -> HookVerdict {
        HookVerdict::Allow {
            acl: None,
            expires_at,
        }
    }

    #[test]
    fn cache_drops_expired_entries_then_the_oldest() {
        let cache = VerdictCache::new(Duration::from_secs(10), 3);
        let start = Instant::now();
        let key = |n: u8| [n; 32];
        let wall = SystemTime::now();
        cache.insert(key(1), &HookVerdict::Deny, start);
        cache.insert(key(2), &HookVerdict::Deny, start + Duration::from_secs(1));
        cache.insert(key(3), &HookVerdict::Deny, start + Duration::from_secs(2));
        // Full: the oldest (1) goes.
        cache.insert(key(4), &HookVerdict::Deny, start + Duration::from_secs(3));
        assert_eq!(cache.len(), 3);
        let now = start + Duration::from_secs(3);
        assert_eq!(cache.get(&key(1), now, wall), None);
        for n in 2..=4 {
            assert_eq!(cache.get(&key(n), now, wall), Some(HookVerdict::Deny));
        }
        // 2 and 3 have expired by then: both go, 4 stays.
        cache.insert(key(5), &HookVerdict::Deny, start + Duration::from_secs(12));
        assert_eq!(cache.len(), 2);
        let now = start + Duration::from_secs(12);
        assert_eq!(cache.get(&key(4), now, wall), Some(HookVerdict::Deny));
        assert_eq!(cache.get(&key(5), now, wall), Some(HookVerdict::Deny));
        // Replacing an entry when full evicts nothing.
        cache.insert(key(5), &allow_until(None), now);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn cache_ignores_unavailable_and_expired_allows() {
        let cache = VerdictCache::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        let wall = SystemTime::now();
        cache.insert([1; 32], &HookVerdict::Unavailable("down".into()), now);
        assert_eq!(cache.len(), 0);
        let soon = wall + Duration::from_secs(5);
        cache.insert([2; 32], &allow_until(Some(soon)), now);
        assert_eq!(
            cache.get(&[2; 32], now, wall),
            Some(allow_until(Some(soon)))
        );
        assert_eq!(cache.get(&[2; 32], now, soon), None);
    }

    #[test]
    fn cache_keys_separate_fields() {
        let cache = VerdictCache::new(Duration::from_secs(60), 10);
        let base = request(b"pw");
        let mut run_together = base;
        run_together.client_id = "sensor-1alice";
        run_together.username = Some("");
        let mut no_username = base;
        no_username.username = None;
        let mut empty_username = base;
        empty_username.username = Some("");
        let mut no_password = base;
        no_password.password = None;
        let mut other_listener = base;
        other_listener.listener = "ws";
        let mut other_protocol = base;
        other_protocol.protocol = 5;
        let keys = [
            cache.key(&base),
            cache.key(&run_together),
            cache.key(&no_username),
            cache.key(&empty_username),
            cache.key(&no_password),
            cache.key(&request(b"")),
            cache.key(&other_listener),
            cache.key(&other_protocol),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(cache.key(&base), cache.key(&request(b"pw")));
        // Another process (another hash key) gives other keys.
        let other = VerdictCache::new(Duration::from_secs(60), 10);
        assert_ne!(cache.key(&base), other.key(&base));
    }

    #[test]
    fn urls() {
        let uri = |url: &str| service_uri(url).map(|uri| uri.to_string());
        assert_eq!(uri("127.0.0.1:8080"), Ok("http://127.0.0.1:8080/".into()));
        assert_eq!(
            uri("auth.local:80/check"),
            Ok("http://auth.local:80/check".into())
        );
        assert_eq!(
            uri("http://auth:9000/mqtt/auth?x=1"),
            Ok("http://auth:9000/mqtt/auth?x=1".into())
        );
        assert_eq!(uri("HTTP://auth:9000"), Ok("http://auth:9000/".into()));
        assert_eq!(uri("https://auth:443/"), Err(HookError::HttpsNotSupported));
        assert!(matches!(uri("ftp://auth/"), Err(HookError::InvalidUrl(_))));
        assert!(matches!(uri(""), Err(HookError::InvalidUrl(_))));
        assert!(matches!(uri("http:///x"), Err(HookError::InvalidUrl(_))));
        assert!(matches!(uri("a b:80"), Err(HookError::InvalidUrl(_))));
        let error = uri("http://user:hunter2@auth:80/").unwrap_err();
        assert!(matches!(error, HookError::InvalidUrl(_)));
        assert!(!error.to_string().contains("hunter2"));
    }

    #[test]
    fn tokens_are_checked_and_never_shown() {
        let new = |token: &str| {
            HttpHook::new(
                "127.0.0.1:1",
                Some(token.to_owned()),
                Duration::from_secs(1),
                Duration::ZERO,
                0,
            )
        };
        assert_eq!(new("").unwrap_err(), HookError::InvalidToken);
        assert_eq!(new("bad\ntoken").unwrap_err(), HookError::InvalidToken);
        let hook = new("s3cr3t-token").unwrap();
        let debug = format!("{hook:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
        let debug = format!("{:?}", request(b"hunter2"));
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
