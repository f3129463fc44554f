//! The broker-wide side of access control: the authenticator `-as` chose, the rules file, and
//! their reloading. A connection's CONNECT goes through [`AccessControl::authenticate`], and
//! what it proves becomes the connection's [`Authorizer`]; a reload of the rules file bumps a
//! generation that connections compare with their own when they are nudged (see
//! [`crate::session::SessionRegistry::recheck_all`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use hmac::{Hmac, KeyInit, Mac};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::signal::unix::Signal;
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use super::acl::{Permission, Rules};
use super::http_hook::{HookRequest, HookVerdict, HttpHook};
use super::jwt::JwtVerifier;
use super::password_file::PasswordFile;
use super::Authorizer;
use crate::config::{AccessConfig, Authentication, HttpServiceSettings, JwtKey, SecretSource};
use crate::metrics::AuthFailureKind;

/// What a CONNECT presents.
pub struct Credentials<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer: SocketAddr,
    /// 3, 4 or 5 for MQTT; 0 for Coolpy7's HTTP and CoAP publish.
    pub protocol: u8,
    /// Where the client came in: an MQTT listener's name (`tcp`, `tls`, `ws`, `wss`), `http`
    /// or `coap`.
    pub listener: &'static str,
    /// The username was taken from a verified client certificate (`-tcn`): the certificate
    /// has authenticated the client.
    pub certificate_user: bool,
}

/// Who a client proved to be.
#[derive(Debug, Default)]
pub struct Identity {
    pub username: Option<String>,
    /// When the credentials stop being valid (a token's `exp`, the HTTP service's
    /// `expire_at`): the connection is closed then.
    pub expires_at: Option<SystemTime>,
    /// Rules the credentials carry, which replace the rules file for this client.
    /// Shared, not inline: an identity waits in every handshake's future while the session is
    /// claimed.
    pub rules: Option<Arc<Rules>>,
}

/// Why a CONNECT was refused; the text is for debug logs and never holds a secret.
#[derive(Debug)]
pub struct AuthFailure {
    pub kind: AuthFailureKind,
    pub reason: String,
}

impl AuthFailure {
    pub fn bad_credentials(reason: impl Into<String>) -> AuthFailure {
        AuthFailure {
            kind: AuthFailureKind::BadCredentials,
            reason: reason.into(),
        }
    }
}

/// The authenticator `-as` chose, with what it loaded (swapped when its files change).
enum Authenticator {
    None,
    Jwt(ArcSwap<JwtVerifier>),
    HttpService(ArcSwap<HttpHook>),
    PasswordFile(PasswordChecker),
}

/// `-as=3`: the password file, and what keeps its hashing from overwhelming the broker.
struct PasswordChecker {
    file: ArcSwap<PasswordFile>,
    /// Hashes computed at once: argon2id takes tens of milliseconds and 19 MiB each, so a
    /// flood of CONNECTs must queue here rather than on every blocking thread tokio has. The
    /// permit goes with the hash onto its thread, so a caller that gives up frees no room
    /// while its hash still runs.
    hashing: Arc<Semaphore>,
    /// CONNECTs waiting for a permit; beyond [`PasswordChecker::max_waiting`] a CONNECT is
    /// refused at once (server unavailable) rather than queued behind a flood.
    waiting: AtomicUsize,
    /// The share of `hashing` HTTP and CoAP publish may use (half, at least one), taken
    /// without waiting: a flood of them leaves MQTT CONNECTs the rest.
    gateway_share: Arc<Semaphore>,
    /// Credentials verified recently, as a keyed digest (never the password), so that a client
    /// reconnecting does not cost a hash each time; cleared when the file changes.
    verified: Mutex<VerifiedCache>,
}

/// Recently verified (user, password) pairs as HMAC-SHA-256 digests under a per-process key.
struct VerifiedCache {
    key: [u8; 32],
    entries: HashMap<[u8; 32], Instant>,
}

/// How long a verified password is taken without hashing it again, and how many are kept.
const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(300);
const VERIFIED_ENTRIES: usize = 100_000;

impl VerifiedCache {
    fn new() -> VerifiedCache {
        VerifiedCache {
            key: rand::random(),
            entries: HashMap::new(),
        }
    }

    fn digest(&self, username: &str, password: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(&(username.len() as u64).to_be_bytes());
        mac.update(username.as_bytes());
        mac.update(password);
        mac.finalize().into_bytes().into()
    }

    fn contains(&self, digest: &[u8; 32], now: Instant) -> bool {
        self.entries
            .get(digest)
            .is_some_and(|&at| now.duration_since(at) < VERIFIED_TTL)
    }

    fn insert(&mut self, digest: [u8; 32], now: Instant) {
        if self.entries.len() >= VERIFIED_ENTRIES {
            self.entries
                .retain(|_, at| now.duration_since(*at) < VERIFIED_TTL);
            if self.entries.len() >= VERIFIED_ENTRIES {
                self.entries.clear();
            }
        }
        self.entries.insert(digest, now);
    }
}

/// Verdicts the HTTP service's cache keeps at most.
const HOOK_CACHE_ENTRIES: usize = 100_000;

/// Authentication and authorization for the whole broker.
pub struct AccessControl {
    config: AccessConfig,
    authenticator: Authenticator,
    /// The rules file's rules (no rules and the `-acld` default when there is no file).
    rules: ArcSwap<Rules>,
    /// Bumped at every change of `rules`.
    generation: AtomicU64,
    /// The files behind the above, as last loaded.
    watched: Mutex<Vec<WatchedFile>>,
}

/// What a watched file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileRole {
    Rules,
    JwtSecret,
    JwtPublicKey,
    HookToken,
    Passwords,
}

struct WatchedFile {
    role: FileRole,
    path: PathBuf,
    /// SHA-256 of the content as last loaded.
    loaded: [u8; 32],
    /// SHA-256 of the last content that failed to load (reported once).
    failed: Option<[u8; 32]>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    /// The rules changed: connections must re-judge their subscriptions.
    RulesChanged,
    /// A key, token or password file changed: new CONNECTs use it (connections stay).
    CredentialsChanged(&'static str),
    Failed(String),
}

fn read_file(path: &Path) -> Result<(Vec<u8>, [u8; 32]), String> {
    let bytes =
        std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let digest = Sha256::digest(&bytes).into();
    Ok((bytes, digest))
}

/// A secret kept in a file: its content without the line end an editor or `echo` adds.
fn secret_text(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|&b| b != b'\n' && b != b'\r')
        .map_or(0, |last| last + 1);
    &bytes[..end]
}

/// What a watched file loads into, before it is swapped in.
enum Loaded {
    Rules(Box<Rules>),
    Jwt(Box<JwtVerifier>),
    HookToken(String),
    Passwords(Arc<PasswordFile>),
}

fn load(role: FileRole, path: &Path, bytes: &[u8], default: Permission) -> Result<Loaded, String> {
    let name = path.display();
    match role {
        FileRole::Rules => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| format!("rules file {name} is not UTF-8"))?;
            Rules::parse(text, default)
                .map(|rules| Loaded::Rules(Box::new(rules)))
                .map_err(|error| format!("rules file {name}: {error}"))
        }
        FileRole::JwtSecret => JwtVerifier::from_secret(secret_text(bytes))
            .map(|verifier| Loaded::Jwt(Box::new(verifier)))
            .map_err(|error| format!("JWT secret file {name}: {error}")),
        FileRole::JwtPublicKey => JwtVerifier::from_public_key_pem(bytes)
            .map(|verifier| Loaded::Jwt(Box::new(verifier)))
            .map_err(|error| format!("JWT public key {name}: {error}")),
        FileRole::HookToken => std::str::from_utf8(secret_text(bytes))
            .ok()
            .filter(|token| !token.is_empty())
            .map(|token| Loaded::HookToken(token.to_string()))
            .ok_or_else(|| format!("HTTP service token file {name} is empty or not UTF-8")),
        FileRole::Passwords => std::str::from_utf8(bytes)
            .map_err(|_| format!("password file {name} is not UTF-8"))
            .and_then(|text| {
                PasswordFile::parse(text).map_err(|error| format!("password file {name}: {error}"))
            })
            .map(|file| Loaded::Passwords(Arc::new(file))),
    }
}

fn hook(settings: &HttpServiceSettings, token: Option<String>) -> Result<HttpHook, String> {
    HttpHook::new(
        &settings.url,
        token,
        settings.timeout,
        settings.cache,
        HOOK_CACHE_ENTRIES,
    )
    .map_err(|error| format!("-ha: {error}"))
}

impl AccessControl {
    /// Loads what the configuration names; `None` when access control is off (no `-as`, no
    /// `-acl`). A file that does not load stops the start.
    pub fn load(config: &AccessConfig) -> Result<Option<Arc<AccessControl>>, String> {
        if !config.is_enabled() {
            return Ok(None);
        }
        let mut watched = Vec::new();
        let mut load_watched = |role: FileRole, path: &PathBuf| -> Result<Loaded, String> {
            let (bytes, digest) = read_file(path)?;
            let loaded = load(role, path, &bytes, config.default)?;
            watched.push(WatchedFile {
                role,
                path: path.clone(),
                loaded: digest,
                failed: None,
            });
            Ok(loaded)
        };
        let rules = match &config.rules {
            Some(path) => match load_watched(FileRole::Rules, path)? {
                Loaded::Rules(rules) => *rules,
                _ => unreachable_role(),
            },
            // Without a rules file, an authenticated client may do anything (unless its
            // credentials carry rules).
            None => Rules::empty(Permission::Allow),
        };
        let authenticator = match &config.authentication {
            Authentication::None => Authenticator::None,
            Authentication::Jwt(key) => {
                let loaded = match key {
                    JwtKey::Secret(SecretSource::Inline(secret)) => {
                        JwtVerifier::from_secret(secret.expose().as_bytes())
                            .map(|verifier| Loaded::Jwt(Box::new(verifier)))
                            .map_err(|error| format!("-jsk: {error}"))?
                    }
                    JwtKey::Secret(SecretSource::File(path)) => {
                        load_watched(FileRole::JwtSecret, path)?
                    }
                    JwtKey::PublicKey(path) => load_watched(FileRole::JwtPublicKey, path)?,
                };
                match loaded {
                    Loaded::Jwt(verifier) => Authenticator::Jwt(ArcSwap::from_pointee(*verifier)),
                    _ => unreachable_role(),
                }
            }
            Authentication::HttpService(settings) => {
                let token = match &settings.token {
                    None => None,
                    Some(SecretSource::Inline(token)) => Some(token.expose().to_string()),
                    Some(SecretSource::File(path)) => {
                        match load_watched(FileRole::HookToken, path)? {
                            Loaded::HookToken(token) => Some(token),
                            _ => unreachable_role(),
                        }
                    }
                };
                if !is_local_service(&settings.url) {
                    warn!("-ha is plain HTTP to another host: clients' passwords cross the network in clear text");
                }
                Authenticator::HttpService(ArcSwap::from_pointee(hook(settings, token)?))
            }
            Authentication::PasswordFile(path) => match load_watched(FileRole::Passwords, path)? {
                Loaded::Passwords(file) => Authenticator::PasswordFile(PasswordChecker {
                    file: ArcSwap::new(file),
                    hashing: Arc::new(Semaphore::new(
                        std::thread::available_parallelism().map_or(2, |n| n.get()),
                    )),
                    waiting: AtomicUsize::new(0),
                    gateway_share: Arc::new(Semaphore::new(
                        (std::thread::available_parallelism().map_or(2, |n| n.get()) / 2).max(1),
                    )),
                    verified: Mutex::new(VerifiedCache::new()),
                }),
                _ => unreachable_role(),
            },
        };
        Ok(Some(Arc::new(AccessControl {
            config: config.clone(),
            authenticator,
            rules: ArcSwap::from_pointee(rules),
            generation: AtomicU64::new(1),
            watched: Mutex::new(watched),
        })))
    }

    /// Checks a CONNECT's credentials.
    pub async fn authenticate(
        &self,
        credentials: &Credentials<'_>,
    ) -> Result<Identity, AuthFailure> {
        let username = credentials.username.map(str::to_string);
        if credentials.certificate_user {
            return Ok(Identity {
                username,
                ..Identity::default()
            });
        }
        match &self.authenticator {
            Authenticator::None => Ok(Identity {
                username,
                ..Identity::default()
            }),
            Authenticator::Jwt(verifier) => {
                // As in Coolpy7: any non-empty username, the token as the password (HTTP and
                // CoAP publish may send the token alone: protocol 0).
                if credentials.protocol != 0 && username.as_deref().is_none_or(str::is_empty) {
                    return Err(AuthFailure::bad_credentials("no username"));
                }
                let token = credentials
                    .password
                    .ok_or_else(|| AuthFailure::bad_credentials("no token (the password)"))?;
                let verified = verifier
                    .load()
                    .verify(token, SystemTime::now())
                    .map_err(|error| AuthFailure::bad_credentials(error.to_string()))?;
                // A token may name its user; then only that user may use it (the rules' `%u`
                // and `user` trust the username).
                // HTTP and CoAP may send the token alone: it names the user then.
                let username = match (username, &verified.username) {
                    (None, Some(bound)) if credentials.protocol == 0 => Some(bound.clone()),
                    (username, _) => username,
                };
                if let Some(bound) = &verified.username {
                    if username.as_deref() != Some(bound.as_str()) {
                        return Err(AuthFailure::bad_credentials(
                            "the username is not the one the token names",
                        ));
                    }
                }
                Ok(Identity {
                    username,
                    expires_at: verified.expires_at,
                    rules: verified
                        .acl
                        .as_ref()
                        .map(|acl| Arc::new(Rules::from_client_acl(acl))),
                })
            }
            Authenticator::PasswordFile(checker) => {
                let user = username
                    .clone()
                    .filter(|user| !user.is_empty())
                    .ok_or_else(|| AuthFailure::bad_credentials("no username"))?;
                let password = credentials
                    .password
                    .ok_or_else(|| AuthFailure::bad_credentials("no password"))?;
                // MQTT CONNECTs may wait for a hashing thread; HTTP and CoAP publish (a
                // datagram costs an attacker nothing) may not, and use at most half of them.
                let patient = credentials.protocol != 0;
                checker.verify(&user, password, patient).await?;
                Ok(Identity {
                    username,
                    ..Identity::default()
                })
            }
            Authenticator::HttpService(service) => {
                let request = HookRequest {
                    client_id: credentials.client_id,
                    username: credentials.username,
                    password: credentials.password,
                    peer: credentials.peer,
                    protocol: credentials.protocol,
                    listener: credentials.listener,
                };
                let service = service.load_full();
                match service.check(&request).await {
                    HookVerdict::Allow { acl, expires_at } => Ok(Identity {
                        username,
                        expires_at,
                        rules: acl
                            .as_ref()
                            .map(|acl| Arc::new(Rules::from_client_acl(acl))),
                    }),
                    HookVerdict::Deny => Err(AuthFailure {
                        kind: AuthFailureKind::NotAuthorized,
                        reason: "the HTTP service denied the client".into(),
                    }),
                    HookVerdict::Unavailable(reason) => Err(AuthFailure {
                        kind: AuthFailureKind::Unavailable,
                        reason: format!("the HTTP service is unavailable: {reason}"),
                    }),
                }
            }
        }
    }

    /// The longest authentication may take: the HTTP service's timeout, else `-nt`'s share.
    pub fn authentication_bound(
        &self,
        connect_timeout: std::time::Duration,
    ) -> std::time::Duration {
        match &self.config.authentication {
            Authentication::HttpService(settings) => connect_timeout.max(settings.timeout),
            _ => connect_timeout,
        }
    }

    /// The rights of a client that proved `identity`.
    pub fn authorizer(
        &self,
        identity: Identity,
        client_id: Arc<str>,
        address: Option<IpAddr>,
    ) -> Box<Authorizer> {
        let username = identity.username.as_deref();
        let mut authorizer = match identity.rules {
            Some(own) => Authorizer::new(own, None, username, client_id, address),
            None => {
                let generation = self.generation.load(Ordering::Acquire);
                let rules = self.rules.load_full();
                Authorizer::new(rules, Some(generation), username, client_id, address)
            }
        };
        // An expiry too far away to represent is as good as none.
        authorizer.expires_at = identity.expires_at.and_then(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::Instant::now().checked_add(left)
        });
        Box::new(authorizer)
    }

    /// Brings `authorizer` up to the rules file's latest generation; returns whether its rules
    /// changed (its subscriptions must then be judged again).
    pub fn refresh(&self, authorizer: &mut Authorizer) -> bool {
        let Some(mine) = authorizer.file_generation else {
            return false;
        };
        let generation = self.generation.load(Ordering::Acquire);
        if generation == mine {
            return false;
        }
        authorizer.replace_rules(self.rules.load_full(), generation);
        true
    }

    /// Whether there are files to watch for changes.
    pub fn watches_files(&self) -> bool {
        !self.watched.lock().is_empty()
    }

    /// Reads the watched files and swaps in what changed and loads.
    pub fn reload(&self) -> Vec<Reload> {
        let mut watched = self.watched.lock();
        watched
            .iter_mut()
            .map(|file| self.reload_one(file))
            .collect()
    }

    fn reload_one(&self, file: &mut WatchedFile) -> Reload {
        let (bytes, digest) = match read_file(&file.path) {
            Ok(read) => read,
            Err(error) => return report_once(file, [0; 32], error),
        };
        if digest == file.loaded {
            return Reload::Unchanged;
        }
        let loaded = match load(file.role, &file.path, &bytes, self.config.default) {
            Ok(loaded) => loaded,
            Err(error) => return report_once(file, digest, error),
        };
        let outcome = match (loaded, &self.authenticator) {
            (Loaded::Rules(rules), _) => {
                self.rules.store(Arc::from(rules));
                self.generation.fetch_add(1, Ordering::AcqRel);
                Reload::RulesChanged
            }
            (Loaded::Jwt(verifier), Authenticator::Jwt(current)) => {
                current.store(Arc::new(*verifier));
                Reload::CredentialsChanged("JWT key")
            }
            (Loaded::Passwords(passwords), Authenticator::PasswordFile(checker)) => {
                let mut verified = checker.verified.lock();
                checker.file.store(passwords);
                verified.entries.clear();
                drop(verified);
                Reload::CredentialsChanged("password file")
            }
            (Loaded::HookToken(token), Authenticator::HttpService(current)) => {
                let Authentication::HttpService(settings) = &self.config.authentication else {
                    return Reload::Unchanged;
                };
                match hook(settings, Some(token)) {
                    Ok(service) => current.store(Arc::new(service)),
                    Err(error) => return report_once(file, digest, error),
                }
                Reload::CredentialsChanged("HTTP service token")
            }
            _ => Reload::Unchanged,
        };
        file.loaded = digest;
        file.failed = None;
        outcome
    }
}

impl PasswordChecker {
    /// Checks `password` for `user`: from the cache of recent successes, else by hashing on a
    /// blocking thread, a few at a time.
    async fn verify(&self, user: &str, password: &[u8], patient: bool) -> Result<(), AuthFailure> {
        let now = Instant::now();
        let digest = {
            let verified = self.verified.lock();
            let digest = verified.digest(user, password);
            if verified.contains(&digest, now) {
                return Ok(());
            }
            digest
        };
        let busy = || AuthFailure {
            kind: AuthFailureKind::Unavailable,
            reason: "too many password checks under way".into(),
        };
        let permits = if patient {
            // Counted while waiting (also when the caller gives up and drops this future).
            struct Waiting<'a>(&'a AtomicUsize);
            impl Drop for Waiting<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::AcqRel);
                }
            }
            if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting() {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                return Err(busy());
            }
            let waiting = Waiting(&self.waiting);
            let permit = self
                .hashing
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| busy())?;
            drop(waiting);
            (permit, None)
        } else {
            let share = self
                .gateway_share
                .clone()
                .try_acquire_owned()
                .map_err(|_| busy())?;
            let permit = self
                .hashing
                .clone()
                .try_acquire_owned()
                .map_err(|_| busy())?;
            (permit, Some(share))
        };
        let file = self.file.load_full();
        let checked = file.clone();
        let (owned_user, owned_password) = (user.to_string(), password.to_vec());
        let matched = tokio::task::spawn_blocking(move || {
            let matched = checked.verify(&owned_user, &owned_password);
            drop(permits);
            matched
        })
        .await
        .unwrap_or(false);
        if !matched {
            return Err(AuthFailure::bad_credentials(
                "unknown user or wrong password",
            ));
        }
        // Not remembered when the file changed meanwhile: the success was against the old one.
        // Checked under the cache's lock, which a reload holds while it swaps the file and
        // clears the cache, so neither can slip between the check and the insert.
        let mut verified = self.verified.lock();
        if Arc::ptr_eq(&file, &self.file.load()) {
            verified.insert(digest, Instant::now());
        }
        Ok(())
    }

    /// Four rounds of hashes may wait: at tens of milliseconds each, well within `-nt`.
    fn max_waiting(&self) -> usize {
        4 * std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

/// Whether the HTTP service's URL names this host (where plain HTTP exposes nothing).
fn is_local_service(url: &str) -> bool {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// A failed reload, reported once per content (`[0; 32]` for an unreadable file).
fn report_once(file: &mut WatchedFile, key: [u8; 32], error: String) -> Reload {
    if file.failed == Some(key) {
        return Reload::Unchanged;
    }
    file.failed = Some(key);
    Reload::Failed(error)
}

/// A file's role and what it loads into always agree (both come from [`FileRole`]).
#[cold]
fn unreachable_role() -> ! {
    unreachable!("a watched file loaded into another role's value")
}

/// Checks the access-control files every `-ari` seconds and on SIGHUP (`hangup`) until `stop`
/// turns true; when the rules change, asks every connection to re-judge its subscriptions
/// (`rules_changed`).
pub async fn watch_files(
    control: Arc<AccessControl>,
    hangup: Option<Signal>,
    stop: watch::Receiver<bool>,
    rules_changed: impl Fn() + Send + 'static,
) {
    let interval = control.config.reload_interval;
    let check = Arc::new(move || control.reload());
    crate::file_watch::watch(interval, hangup, stop, check, |cause, outcomes| {
        for outcome in outcomes {
            match outcome {
                Reload::Unchanged => {}
                Reload::RulesChanged => {
                    info!(cause, "authorization rules reloaded");
                    rules_changed();
                }
                Reload::CredentialsChanged(what) => info!(cause, "{what} reloaded"),
                Reload::Failed(error) => {
                    warn!(cause, %error, "access-control file changed but does not load; keeping the previous one")
                }
            }
        }
    })
    .await
}
