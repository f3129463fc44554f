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

pub mod acl;
mod authorizer;
mod control;
pub mod http_hook;
pub mod jwt;
pub mod password_file;

pub use authorizer::Authorizer;
pub use control::{watch_files, AccessControl, AuthFailure, Credentials, Identity, Reload};

use serde::Deserialize;

use crate::topic;

/// Topic filters a client's credentials allow it (a JWT's `acl` claim, the HTTP service's
/// answer): the client may publish to what `publish` matches and subscribe to what `subscribe`
/// covers; `%u` and `%c` stand for its username and client id as in the rules file. Everything
/// else is denied to that client.
///
/// Read only from a JSON object of those three lists: an unknown key, or an `acl` of another
/// shape (serde would take a struct from an array), refuses the credentials, since a misspelt
/// list would otherwise let the client in with no rights at all, silently.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "serde_json::Map<String, serde_json::Value>")]
pub struct ClientAcl {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// Both publish and subscribe.
    pub all: Vec<String>,
}

impl TryFrom<serde_json::Map<String, serde_json::Value>> for ClientAcl {
    type Error = String;

    fn try_from(object: serde_json::Map<String, serde_json::Value>) -> Result<ClientAcl, String> {
        let mut acl = ClientAcl::default();
        for (key, value) in object {
            let list = match key.as_str() {
                "pub" => &mut acl.publish,
                "sub" => &mut acl.subscribe,
                "all" => &mut acl.all,
                _ => return Err(format!("unknown acl list {:?}", shortened(&key))),
            };
            *list = serde_json::from_value(value)
                .map_err(|_| format!("acl {key:?} is not a list of strings"))?;
        }
        Ok(acl)
    }
}

impl ClientAcl {
    /// Checks that every entry is an MQTT topic filter (`+` and `#` only as whole levels, `#`
    /// last, non-empty, no U+0000); `%u` and `%c` are plain text here and are substituted when
    /// the rules are applied. Credentials whose rules do not parse are refused as a whole: a
    /// typo would otherwise silently deny (or, worse, widen) what the issuer meant. The error
    /// names the list and the entry, which come from a verified token or the operator's own
    /// service and carry no secret.
    pub fn validate(&self) -> Result<(), String> {
        let lists = [
            ("pub", &self.publish),
            ("sub", &self.subscribe),
            ("all", &self.all),
        ];
        for (list, filters) in lists {
            for (index, filter) in filters.iter().enumerate() {
                if filter.contains('\0') || !topic::is_valid_filter(filter) {
                    return Err(format!(
                        "acl \"{list}\" entry {index} is not a valid topic filter: {:?}",
                        shortened(filter)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// At most the first 100 characters, so that an error about a huge entry stays a log line.
fn shortened(text: &str) -> &str {
    match text.char_indices().nth(100) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(publish: &[&str], subscribe: &[&str], all: &[&str]) -> ClientAcl {
        let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        ClientAcl {
            publish: owned(publish),
            subscribe: owned(subscribe),
            all: owned(all),
        }
    }

    #[test]
    fn acl_accepts_filters_and_placeholders() {
        let valid = acl(
            &["t/1", "x/%c/up", "a//b"],
            &["t/#", "+/status", "#", "+"],
            &["x/%u/#", "$SYS/#"],
        );
        assert_eq!(valid.validate(), Ok(()));
        assert_eq!(ClientAcl::default().validate(), Ok(()));
    }

    #[test]
    fn acl_refuses_invalid_filters_naming_the_entry() {
        for bad in ["", "a/#/b", "a#", "a/b+", "+a/b", "a/\0"] {
            let error = acl(&[], &["ok/#", bad], &[]).validate().unwrap_err();
            assert!(error.contains("\"sub\" entry 1"), "{error}");
        }
        assert!(acl(&["#/a"], &[], &[])
            .validate()
            .unwrap_err()
            .contains("\"pub\" entry 0"));
        assert!(acl(&[], &[], &["a/+b"])
            .validate()
            .unwrap_err()
            .contains("\"all\" entry 0"));
    }

    #[test]
    fn acl_error_is_bounded() {
        let long = format!("{}#", "a".repeat(10_000));
        let error = acl(&[&long], &[], &[]).validate().unwrap_err();
        assert!(error.len() < 200, "{}", error.len());
    }
}
