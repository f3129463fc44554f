//! The access-control flags: how clients authenticate (`-as` and what each mode needs), the
//! authorization rules (`-acl`, `-acld`), and the abuse limits (`-pl`, `-psl`, `-dt`, `-cr`,
//! `-prm`, `-prb`), resolved into an [`AccessConfig`] and [`AbuseLimits`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::acl::Permission;

/// `-ha` when not given, as in the original Coolpy7.
pub const DEFAULT_HTTP_SERVICE: &str = "localhost:5683";
/// `-ht` when neither it nor `-htf` is given, as in the original Coolpy7.
pub const DEFAULT_HTTP_SERVICE_TOKEN: &str = "coolpy7";

/// `-as`, as the original Coolpy7 numbers it (3 is new).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    #[default]
    None,
    Jwt,
    HttpService,
    PasswordFile,
}

pub(super) fn parse_auth_mode(s: &str) -> Result<AuthMode, String> {
    match s {
        "0" | "none" => Ok(AuthMode::None),
        "1" | "jwt" => Ok(AuthMode::Jwt),
        "2" | "http" => Ok(AuthMode::HttpService),
        "3" | "password" => Ok(AuthMode::PasswordFile),
        _ => Err("expected 0 (none), 1 (JWT), 2 (HTTP service) or 3 (password file)".into()),
    }
}

pub(super) fn parse_permission(s: &str) -> Result<Permission, String> {
    s.parse()
}

/// A secret from the command line or the environment: never printed, not even by `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

pub(super) fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret(s.to_string()))
}

/// Where a value the broker re-reads comes from: given inline, or a file checked for changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Inline(Secret),
    File(PathBuf),
}

/// How the JWT's signature is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKey {
    /// `-jsk` / `-jskf`: an HMAC secret (HS256, HS384, HS512).
    Secret(SecretSource),
    /// `-jpk`: a PEM public key (RS*, PS*, ES256, ES384, EdDSA).
    PublicKey(PathBuf),
}

/// `-ha` and its companions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpServiceSettings {
    pub url: String,
    pub token: Option<SecretSource>,
    pub timeout: Duration,
    pub cache: Duration,
}

/// How clients authenticate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Authentication {
    #[default]
    None,
    Jwt(JwtKey),
    HttpService(HttpServiceSettings),
    PasswordFile(PathBuf),
}

/// Authentication and authorization, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessConfig {
    pub authentication: Authentication,
    /// `-acl`: the rules file; `None` = no rules (everything allowed, unless a client's own
    /// credentials carry rules).
    pub rules: Option<PathBuf>,
    /// `-acld`: the decision when no rule matches.
    pub default: Permission,
    /// `-ari`: how often the files above are checked for changes.
    pub reload_interval: Duration,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            authentication: Authentication::None,
            rules: None,
            default: Permission::Deny,
            reload_interval: Duration::from_secs(5),
        }
    }
}

impl AccessConfig {
    /// Whether anything is checked at all: when not, connections carry no access state.
    pub fn is_enabled(&self) -> bool {
        self.authentication != Authentication::None || self.rules.is_some()
    }
}

/// Coolpy7's limits on how often a client may ping and publish, and the connection and publish
/// rates; each `None` when off.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AbuseLimits {
    /// `-pl`: the shortest time allowed between two PINGREQs.
    pub ping_interval: Option<Duration>,
    /// `-psl`: the shortest time allowed between two PUBLISHes.
    pub publish_interval: Option<Duration>,
    /// `-dt`: how long a client closed for going faster is refused.
    pub ban: Option<Duration>,
    /// `-cr`: new connections per second per listener.
    pub connection_rate: Option<u32>,
    /// `-prm`: PUBLISH packets per second per client.
    pub publish_messages: Option<u32>,
    /// `-prb`: PUBLISH payload bytes per second per client.
    pub publish_bytes: Option<u64>,
}

impl AbuseLimits {
    pub fn publish_rate_limited(&self) -> bool {
        self.publish_messages.is_some() || self.publish_bytes.is_some()
    }
}

/// The flags as given, before their combinations are checked.
pub(super) struct AccessFlags {
    pub mode: AuthMode,
    pub jwt_secret: Option<Secret>,
    pub jwt_secret_file: Option<PathBuf>,
    pub jwt_public_key: Option<PathBuf>,
    pub http_url: Option<String>,
    pub http_token: Option<Secret>,
    pub http_token_file: Option<PathBuf>,
    pub http_timeout: u64,
    pub http_cache: u64,
    pub password_file: Option<PathBuf>,
    pub rules: Option<PathBuf>,
    pub default: Permission,
    pub reload_secs: u64,
}

impl AccessFlags {
    pub fn resolve(self) -> Result<AccessConfig, String> {
        let authentication = match self.mode {
            AuthMode::None => Authentication::None,
            AuthMode::Jwt => {
                let secret = match (self.jwt_secret, self.jwt_secret_file) {
                    (Some(_), Some(_)) => {
                        return Err("-jsk and -jskf both give the JWT secret: give one".into())
                    }
                    (Some(secret), None) if secret.expose().is_empty() => {
                        return Err("-as=1 needs a non-empty JWT secret (-jsk)".into())
                    }
                    (Some(secret), None) => Some(SecretSource::Inline(secret)),
                    (None, Some(file)) => Some(SecretSource::File(file)),
                    (None, None) => None,
                };
                match (secret, self.jwt_public_key) {
                    (Some(secret), None) => Authentication::Jwt(JwtKey::Secret(secret)),
                    (None, Some(key)) => Authentication::Jwt(JwtKey::PublicKey(key)),
                    (Some(_), Some(_)) => {
                        return Err("-as=1 takes one key: an HMAC secret (-jsk or -jskf) or a \
                                    public key (-jpk), not both (the key fixes the algorithm)"
                            .into())
                    }
                    (None, None) => return Err(
                        "-as=1 (JWT) needs the key tokens are checked with: -jsk, -jskf or -jpk"
                            .into(),
                    ),
                }
            }
            AuthMode::HttpService => {
                // Coolpy7's defaults: a service on this host, and its token.
                let url = self
                    .http_url
                    .unwrap_or_else(|| DEFAULT_HTTP_SERVICE.to_string());
                if url.is_empty() {
                    return Err("-as=2 (HTTP service) needs its address: -ha".into());
                }
                let token = match (self.http_token, self.http_token_file) {
                    (Some(_), Some(_)) => {
                        return Err("-ht and -htf both give the service's token: give one".into())
                    }
                    (Some(token), None) => {
                        (!token.expose().is_empty()).then_some(SecretSource::Inline(token))
                    }
                    (None, Some(file)) => Some(SecretSource::File(file)),
                    (None, None) => Some(SecretSource::Inline(Secret(
                        DEFAULT_HTTP_SERVICE_TOKEN.to_string(),
                    ))),
                };
                Authentication::HttpService(HttpServiceSettings {
                    url,
                    token,
                    timeout: Duration::from_secs(self.http_timeout),
                    cache: Duration::from_secs(self.http_cache),
                })
            }
            AuthMode::PasswordFile => Authentication::PasswordFile(
                self.password_file
                    .ok_or("-as=3 (password file) needs the file: -pwf")?,
            ),
        };
        Ok(AccessConfig {
            authentication,
            rules: self.rules,
            default: self.default,
            reload_interval: Duration::from_secs(self.reload_secs),
        })
    }
}
