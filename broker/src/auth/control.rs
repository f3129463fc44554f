//! The broker-wide side of access control: the authenticator `-as` chose, the rules file, and
//! their reloading. A connection's CONNECT goes through [`AccessControl::authenticate`], and
//! what it proves becomes the connection's [`Authorizer`]; a reload of the rules file bumps a
//! generation that connections compare with their own when they are nudged (see
//! [`crate::session::SessionRegistry::recheck_all`]).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::signal::unix::Signal;
use tokio::sync::watch;
use tracing::{info, warn};

use super::acl::{Permission, Rules};
use super::Authorizer;
use crate::config::{AccessConfig, Authentication};
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
    pub rules: Option<Rules>,
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

/// The authenticator `-as` chose, with what it loaded.
enum Authenticator {
    None,
}

/// Authentication and authorization for the whole broker.
pub struct AccessControl {
    config: AccessConfig,
    authenticator: Authenticator,
    /// The rules file's rules (no rules and the `-acld` default when there is no file).
    rules: ArcSwap<Rules>,
    /// Bumped at every change of `rules`.
    generation: AtomicU64,
    /// SHA-256 of the files as last loaded, and of the last content that failed to load (so
    /// that a bad file is reported once).
    digests: Mutex<Vec<WatchedFile>>,
}

struct WatchedFile {
    path: PathBuf,
    loaded: [u8; 32],
    failed: Option<[u8; 32]>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    /// The rules changed: connections must re-judge their subscriptions.
    RulesChanged,
    Failed(String),
}

fn read_file(path: &Path) -> Result<(String, [u8; 32]), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let digest = Sha256::digest(text.as_bytes()).into();
    Ok((text, digest))
}

fn load_rules(path: &Path, default: Permission) -> Result<(Rules, [u8; 32]), String> {
    let (text, digest) = read_file(path)?;
    let rules = Rules::parse(&text, default)
        .map_err(|error| format!("rules file {}: {error}", path.display()))?;
    Ok((rules, digest))
}

impl AccessControl {
    /// Loads what the configuration names; `None` when access control is off (no `-as`, no
    /// `-acl`). A file that does not load stops the start.
    pub fn load(config: &AccessConfig) -> Result<Option<Arc<AccessControl>>, String> {
        if !config.is_enabled() {
            return Ok(None);
        }
        let mut watched = Vec::new();
        let rules = match &config.rules {
            Some(path) => {
                let (rules, digest) = load_rules(path, config.default)?;
                watched.push(WatchedFile {
                    path: path.clone(),
                    loaded: digest,
                    failed: None,
                });
                rules
            }
            // Without a rules file, an authenticated client may do anything (unless its
            // credentials carry rules).
            None => Rules::empty(Permission::Allow),
        };
        let authenticator = match &config.authentication {
            Authentication::None => Authenticator::None,
            other => return Err(format!("{other:?} is not available yet")),
        };
        Ok(Some(Arc::new(AccessControl {
            config: config.clone(),
            authenticator,
            rules: ArcSwap::from_pointee(rules),
            generation: AtomicU64::new(1),
            digests: Mutex::new(watched),
        })))
    }

    /// Checks a CONNECT's credentials.
    pub async fn authenticate(
        &self,
        credentials: &Credentials<'_>,
    ) -> Result<Identity, AuthFailure> {
        if credentials.certificate_user {
            return Ok(Identity {
                username: credentials.username.map(str::to_string),
                ..Identity::default()
            });
        }
        match &self.authenticator {
            Authenticator::None => Ok(Identity {
                username: credentials.username.map(str::to_string),
                ..Identity::default()
            }),
        }
    }

    /// The rights of a client that proved `identity`.
    pub fn authorizer(
        &self,
        identity: Identity,
        client_id: Arc<str>,
        address: IpAddr,
    ) -> Box<Authorizer> {
        let username = identity.username.as_deref();
        let mut authorizer = match identity.rules {
            Some(own) => Authorizer::new(Arc::new(own), None, username, client_id, address),
            None => {
                let generation = self.generation.load(Ordering::Acquire);
                let rules = self.rules.load_full();
                Authorizer::new(rules, Some(generation), username, client_id, address)
            }
        };
        authorizer.expires_at = identity.expires_at.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::Instant::now() + left
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
        !self.digests.lock().is_empty()
    }

    /// Reads the watched files and loads what changed.
    pub fn reload(&self) -> Vec<Reload> {
        let mut outcomes = Vec::new();
        let mut watched = self.digests.lock();
        for file in watched.iter_mut() {
            let outcome = if Some(&file.path) == self.config.rules.as_ref() {
                match load_rules(&file.path, self.config.default) {
                    Ok((_, digest)) if digest == file.loaded => Reload::Unchanged,
                    Ok((rules, digest)) => {
                        self.rules.store(Arc::new(rules));
                        self.generation.fetch_add(1, Ordering::AcqRel);
                        file.loaded = digest;
                        file.failed = None;
                        Reload::RulesChanged
                    }
                    Err(error) => {
                        // Reported once per content; unreadable files count as one content.
                        let key = read_file(&file.path).map_or([0; 32], |(_, digest)| digest);
                        if file.failed == Some(key) || key == file.loaded {
                            Reload::Unchanged
                        } else {
                            file.failed = Some(key);
                            Reload::Failed(error)
                        }
                    }
                }
            } else {
                Reload::Unchanged
            };
            outcomes.push(outcome);
        }
        outcomes
    }
}

/// Checks the access-control files every `-ari` seconds and on SIGHUP (`hangup`) until `stop`
/// turns true; when the rules change, asks every connection to re-judge its subscriptions
/// (`rules_changed`).
pub async fn watch_files(
    control: Arc<AccessControl>,
    mut hangup: Option<Signal>,
    mut stop: watch::Receiver<bool>,
    rules_changed: impl Fn() + Send + 'static,
) {
    let mut ticks = tokio::time::interval(control.config.reload_interval);
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
        let reloading = control.clone();
        let Ok(outcomes) = tokio::task::spawn_blocking(move || reloading.reload()).await else {
            continue;
        };
        for outcome in outcomes {
            match outcome {
                Reload::Unchanged => {}
                Reload::RulesChanged => {
                    info!(cause, "authorization rules reloaded");
                    rules_changed();
                }
                Reload::Failed(error) => {
                    warn!(cause, %error, "access-control file changed but does not load; keeping the previous one")
                }
            }
        }
    }
}
