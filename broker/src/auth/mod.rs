//! Access control: who a client is (authentication at CONNECT) and what it may do
//! (authorization of every PUBLISH, SUBSCRIBE, will and delivery).
//!
//! A CONNECT's credentials go to the [`Authenticator`] chosen by `-as` (none, a JWT, an HTTP
//! service, a password file; a verified client certificate under `-tcn` stands for them). What
//! it accepts becomes the connection's [`Identity`]: a username, when the credentials stop being
//! valid, and the client's own rules when its token or the HTTP service gave some. The rules
//! (`acl`) decide each action from the identity, the client id and the client's address; the
//! connection asks them once per filter and caches the answers, so the publish path walks no
//! rules in the common case.

pub mod password_file;

use serde::Deserialize;

/// Topic filters a client's credentials allow it (a JWT's `acl` claim, the HTTP service's
/// answer): the client may publish to what `publish` matches and subscribe to what `subscribe`
/// covers; `%u` and `%c` stand for its username and client id as in the rules file. Everything
/// else is denied to that client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ClientAcl {
    #[serde(default, rename = "pub")]
    pub publish: Vec<String>,
    #[serde(default, rename = "sub")]
    pub subscribe: Vec<String>,
    /// Both publish and subscribe.
    #[serde(default)]
    pub all: Vec<String>,
}
