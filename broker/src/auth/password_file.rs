//! The password file (`-pwf FILE`, checked when `-as 3`): one `user:hash` line per user.
//!
//! [`PasswordFile::load`] reads and parses the whole file once into a map from user name to the
//! decoded hash; the broker shares it in an `Arc` and checks each CONNECT's username and
//! password with [`PasswordFile::verify`]. `coolpy7 passwd` ([`crate::passwd`]) writes the lines:
//! [`hash_password`] makes the hash and [`set_user`] / [`delete_user`] edit the file's text.
//!
//! New hashes are argon2id PHC strings. Mosquitto's `mosquitto_passwd` lines (`$7$`, PBKDF2 with
//! SHA-512, and the older `$6$`, salted SHA-512) are accepted too, so that a Mosquitto password
//! file can be used as it is and its users moved to argon2id one `coolpy7 passwd` at a time.
//!
//! Hashes are secrets (they let an attacker guess passwords offline): no error message, log line
//! or `Debug` output here contains one.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
use base64ct::{Base64, Encoding};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// OWASP's recommended argon2id cost (Password Storage Cheat Sheet): 19 MiB of memory, two
/// passes, one lane. About 20-50 ms of one core per check: slow enough to make offline guessing
/// costly, cheap enough that a burst of reconnecting clients does not stall the broker, and
/// small enough in memory that many checks can run at once.
const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
const ARGON2_PASSES: u32 = 2;
const ARGON2_LANES: u32 = 1;

/// The largest argon2 memory cost accepted from the file (1 GiB). Every CONNECT for that user
/// allocates it, so a typo of a few digits would let a handful of clients exhaust the host.
const MAX_ARGON2_MEMORY_KIB: u32 = 1024 * 1024;

/// Salt and hash sizes of Mosquitto's password lines (`SALT_LEN` and the SHA-512 output in its
/// `password_mosq.h`); Mosquitto refuses lines with other sizes, and so do we.
const MOSQUITTO_SALT_LEN: usize = 12;
const MOSQUITTO_HASH_LEN: usize = 64;

/// The longest user name MQTT can carry (a two-byte length prefix).
const MAX_USERNAME_LEN: usize = 65_535;

/// Users and their password hashes, as read from a password file.
///
/// Checking a password is CPU-heavy by design (argon2id takes tens of milliseconds): call
/// [`PasswordFile::verify`] from a blocking thread (`tokio::task::spawn_blocking`), not on an
/// async worker. The file is immutable once parsed, `Send + Sync`, and meant to be shared in an
/// `Arc`; a reload builds a new one.
pub struct PasswordFile {
    users: HashMap<String, StoredHash>,
    /// What an unknown user's password is checked against, so that a failed login costs the
    /// same whether or not the user exists (see [`decoy_for`]).
    decoy: StoredHash,
}

/// Why a password file could not be used. Names the line, never the hash on it.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("cannot read the password file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: LineError },
}

impl PasswordFileError {
    /// The 1-based line the error is on, for a parse error.
    pub fn line(&self) -> Option<usize> {
        match self {
            PasswordFileError::Read { .. } => None,
            PasswordFileError::Line { line, .. } => Some(*line),
        }
    }
}

/// What is wrong with one line of a password file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("expected user:hash")]
    MissingColon,
    #[error("the user name is empty")]
    EmptyUser,
    #[error("user {user:?} is already on line {first_line}")]
    DuplicateUser { user: String, first_line: usize },
    #[error(
        "the password hash is in no supported format (argon2id, or mosquitto_passwd's $7$ or $6$)"
    )]
    UnsupportedHash,
    #[error("invalid {scheme} password hash: {reason}")]
    InvalidHash {
        scheme: &'static str,
        reason: &'static str,
    },
}

/// Why a user name cannot go into a password file (see [`check_username`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    #[error("the user name is empty")]
    Empty,
    #[error("the user name is longer than MQTT allows (65535 bytes)")]
    TooLong,
    #[error("the user name contains ':', which separates it from the hash")]
    Colon,
    #[error("the user name contains a control character")]
    ControlCharacter,
    #[error("the user name starts or ends with white space, which the file ignores")]
    SurroundingWhitespace,
    #[error("the user name starts with '#', which the file reads as a comment")]
    CommentMark,
}

/// Hashing a new password failed (the system's random number generator, in practice).
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashPasswordError(argon2::password_hash::Error);

/// A user's decoded password hash.
#[derive(Clone)]
enum StoredHash {
    /// `$argon2id$v=19$m=..,t=..,p=..$salt$hash`.
    Argon2id {
        params: Params,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// Mosquitto 2.x: `$7$iterations$salt$hash`, PBKDF2-HMAC-SHA512 with a 64-byte output.
    MosquittoPbkdf2 {
        iterations: u32,
        salt: [u8; MOSQUITTO_SALT_LEN],
        hash: [u8; MOSQUITTO_HASH_LEN],
    },
    /// Mosquitto 1.x: `$6$salt$hash`, SHA-512 of the password followed by the salt.
    MosquittoSha512 {
        salt: [u8; MOSQUITTO_SALT_LEN],
        hash: [u8; MOSQUITTO_HASH_LEN],
    },
}

impl PasswordFile {
    /// Reads and parses the password file at `path`.
    pub fn load(path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswordFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        PasswordFile::parse(&text)
    }

    /// Parses a password file's text: `user:hash` lines; blank lines and lines starting with `#`
    /// are ignored, and white space around the user name and the hash too (as Mosquitto does).
    pub fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        // In file order, so that the decoy is chosen the same way on every load.
        let mut entries: Vec<(String, StoredHash)> = Vec::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let at_line = |problem| PasswordFileError::Line {
                line: line_number,
                problem,
            };
            let Some(entry) = split_entry(line) else {
                continue;
            };
            let (user, hash) = entry.map_err(at_line)?;
            if user.is_empty() {
                return Err(at_line(LineError::EmptyUser));
            }
            if let Some(&first) = first_line.get(user) {
                return Err(at_line(LineError::DuplicateUser {
                    user: user.to_string(),
                    first_line: first,
                }));
            }
            let stored = StoredHash::parse(hash).map_err(at_line)?;
            first_line.insert(user.to_string(), line_number);
            entries.push((user.to_string(), stored));
        }
        let decoy = decoy_for(entries.iter().map(|(_, stored)| stored));
        Ok(PasswordFile {
            users: entries.into_iter().collect(),
            decoy,
        })
    }

    /// How many users the file has.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users (every login then fails).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `username`'s. An unknown user costs about as much as a known one
    /// (the password is hashed against a decoy of the same kind), so that which users exist
    /// cannot be learnt by timing failed logins. CPU-heavy: see [`PasswordFile`].
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        match self.users.get(username) {
            Some(stored) => stored.matches(password),
            None => {
                // The outcome is discarded: only the time spent matters.
                let _ = self.decoy.matches(password);
                false
            }
        }
    }
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Neither the hashes nor (for the logs' sake) the user names.
        f.debug_struct("PasswordFile")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

/// A new argon2id PHC string for `password`, with a random 16-byte salt and OWASP's cost (see
/// [`ARGON2_MEMORY_KIB`]).
pub fn hash_password(password: &[u8]) -> Result<String, HashPasswordError> {
    let hash = owasp_argon2id()
        .hash_password(password)
        .map_err(HashPasswordError)?;
    Ok(hash.to_string())
}

/// Whether `user` can be written to a password file and read back as the same name: what
/// `coolpy7 passwd` accepts.
pub fn check_username(user: &str) -> Result<(), UsernameError> {
    if user.is_empty() {
        Err(UsernameError::Empty)
    } else if user.len() > MAX_USERNAME_LEN {
        Err(UsernameError::TooLong)
    } else if user.contains(':') {
        Err(UsernameError::Colon)
    } else if user.chars().any(char::is_control) {
        Err(UsernameError::ControlCharacter)
    } else if user.trim() != user {
        Err(UsernameError::SurroundingWhitespace)
    } else if user.starts_with('#') {
        Err(UsernameError::CommentMark)
    } else {
        Ok(())
    }
}

/// `text` with `user`'s line set to `user:hash`: the user's first line is replaced where it is
/// (keeping its line ending) and any later ones (duplicates, which the broker would refuse) are
/// dropped; a new user is appended. Every other line, comments and invalid lines included, is
/// kept byte for byte. `user` must pass [`check_username`].
pub fn set_user(text: &str, user: &str, hash: &str) -> String {
    let mut out = String::with_capacity(text.len() + user.len() + hash.len() + 2);
    let mut replaced = false;
    for line in text.split_inclusive('\n') {
        if line_user(line) != Some(user) {
            out.push_str(line);
        } else if !replaced {
            let content = line_content(line);
            out.push_str(user);
            out.push(':');
            out.push_str(hash);
            out.push_str(&line[content.len()..]);
            replaced = true;
        }
    }
    if !replaced {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(user);
        out.push(':');
        out.push_str(hash);
        out.push('\n');
    }
    out
}

/// `text` without `user`'s lines, every other line kept byte for byte; `None` when the user has
/// no line.
pub fn delete_user(text: &str, user: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut found = false;
    for line in text.split_inclusive('\n') {
        if line_user(line) == Some(user) {
            found = true;
        } else {
            out.push_str(line);
        }
    }
    found.then_some(out)
}

/// A line without its `\n` or `\r\n` ending.
fn line_content(line: &str) -> &str {
    let line = line.strip_suffix('\n').unwrap_or(line);
    line.strip_suffix('\r').unwrap_or(line)
}

/// The (user, hash) a line holds, both trimmed; `None` for a blank or comment line. The parser
/// and the editing functions both read lines through this, so they agree on whose line it is.
fn split_entry(line: &str) -> Option<Result<(&str, &str), LineError>> {
    let content = line_content(line).trim();
    if content.is_empty() || content.starts_with('#') {
        return None;
    }
    Some(
        content
            .split_once(':')
            .map(|(user, hash)| (user.trim(), hash.trim()))
            .ok_or(LineError::MissingColon),
    )
}

/// The user a line is for, if it is a `user:hash` line.
fn line_user(line: &str) -> Option<&str> {
    match split_entry(line) {
        Some(Ok((user, _))) => Some(user),
        _ => None,
    }
}

fn owasp_argon2id() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, owasp_params())
}

fn owasp_params() -> Params {
    // The constants are within argon2's bounds, so this cannot fail; the fallback is the crate's
    // own default, which is the same OWASP cost.
    Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, ARGON2_LANES, None).unwrap_or_default()
}

/// What an unknown user's password is checked against: a hash of the same kind and cost as most
/// of the file's users have (the first such in file order on a tie), with a fixed salt and an
/// all-zero hash; argon2id at OWASP's cost for an empty file. A file that mixes kinds (during a
/// migration from Mosquitto) still lets the users of the other kinds be told apart by timing.
fn decoy_for<'a>(stored: impl Iterator<Item = &'a StoredHash>) -> StoredHash {
    let mut kinds: Vec<(&StoredHash, usize)> = Vec::new();
    for hash in stored {
        match kinds.iter_mut().find(|(seen, _)| seen.same_cost(hash)) {
            Some((_, count)) => *count += 1,
            None => kinds.push((hash, 1)),
        }
    }
    // `max_by_key` keeps the last of equal maxima; reversing makes it the first in file order.
    match kinds.into_iter().rev().max_by_key(|(_, count)| *count) {
        Some((hash, _)) => hash.decoy(),
        None => StoredHash::Argon2id {
            params: owasp_params(),
            salt: DECOY_SALT.to_vec(),
            hash: vec![0; Params::DEFAULT_OUTPUT_LEN],
        },
    }
}

const DECOY_SALT: &[u8; 16] = b"coolpy7-decoy-sa";

impl StoredHash {
    /// Decodes the hash part of a line.
    fn parse(text: &str) -> Result<StoredHash, LineError> {
        if text.starts_with("$argon2id$") {
            parse_argon2id(text)
        } else if let Some(rest) = text.strip_prefix("$7$") {
            parse_mosquitto_pbkdf2(rest)
        } else if let Some(rest) = text.strip_prefix("$6$") {
            parse_mosquitto_sha512(rest)
        } else {
            Err(LineError::UnsupportedHash)
        }
    }

    /// Derives `password`'s hash with this one's salt and cost and compares the two in constant
    /// time.
    fn matches(&self, password: &[u8]) -> bool {
        match self {
            StoredHash::Argon2id { params, salt, hash } => {
                let mut derived = vec![0u8; hash.len()];
                let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
                // Fails only for a password longer than 4 GiB, which no MQTT packet carries.
                argon2
                    .hash_password_into(password, salt, &mut derived)
                    .is_ok()
                    && bool::from(derived.ct_eq(hash))
            }
            StoredHash::MosquittoPbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut derived = [0u8; MOSQUITTO_HASH_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut derived);
                derived.ct_eq(hash).into()
            }
            StoredHash::MosquittoSha512 { salt, hash } => {
                let derived = Sha512::new()
                    .chain_update(password)
                    .chain_update(salt)
                    .finalize();
                derived.as_slice().ct_eq(hash).into()
            }
        }
    }

    /// Whether checking a password against `other` costs the same as against this.
    fn same_cost(&self, other: &StoredHash) -> bool {
        match (self, other) {
            (
                StoredHash::Argon2id { params, hash, .. },
                StoredHash::Argon2id {
                    params: other_params,
                    hash: other_hash,
                    ..
                },
            ) => params == other_params && hash.len() == other_hash.len(),
            (
                StoredHash::MosquittoPbkdf2 { iterations, .. },
                StoredHash::MosquittoPbkdf2 {
                    iterations: other_iterations,
                    ..
                },
            ) => iterations == other_iterations,
            (StoredHash::MosquittoSha512 { .. }, StoredHash::MosquittoSha512 { .. }) => true,
            _ => false,
        }
    }

    /// A hash of the same kind and cost that no password matches in practice.
    fn decoy(&self) -> StoredHash {
        let mosquitto_salt = [0x5a; MOSQUITTO_SALT_LEN];
        match self {
            StoredHash::Argon2id { params, hash, .. } => StoredHash::Argon2id {
                params: params.clone(),
                salt: DECOY_SALT.to_vec(),
                hash: vec![0; hash.len()],
            },
            StoredHash::MosquittoPbkdf2 { iterations, .. } => StoredHash::MosquittoPbkdf2 {
                iterations: *iterations,
                salt: mosquitto_salt,
                hash: [0; MOSQUITTO_HASH_LEN],
            },
            StoredHash::MosquittoSha512 { .. } => StoredHash::MosquittoSha512 {
                salt: mosquitto_salt,
                hash: [0; MOSQUITTO_HASH_LEN],
            },
        }
    }
}

fn parse_argon2id(text: &str) -> Result<StoredHash, LineError> {
    let invalid = |reason| LineError::InvalidHash {
        scheme: "argon2id",
        reason,
    };
    let phc = PasswordHash::new(text).map_err(|_| invalid("not a valid PHC string"))?;
    if phc.version != Some(Version::V0x13.into()) {
        return Err(invalid("the version is not v=19"));
    }
    let (Some(salt), Some(hash)) = (&phc.salt, &phc.hash) else {
        return Err(invalid("the salt or the hash is missing"));
    };
    let params = Params::try_from(&phc).map_err(|_| invalid("invalid m, t or p parameter"))?;
    if params.m_cost() > MAX_ARGON2_MEMORY_KIB {
        return Err(invalid("the memory cost m is more than 1 GiB"));
    }
    if salt.len() < argon2::MIN_SALT_LEN {
        return Err(invalid("the salt is shorter than 8 bytes"));
    }
    Ok(StoredHash::Argon2id {
        params,
        salt: salt.to_vec(),
        hash: hash.as_bytes().to_vec(),
    })
}

/// `iterations$salt$hash`, after the `$7$`.
fn parse_mosquitto_pbkdf2(rest: &str) -> Result<StoredHash, LineError> {
    const SCHEME: &str = "mosquitto $7$";
    let mut fields = rest.split('$');
    let (Some(iterations), Some(salt), Some(hash), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(LineError::InvalidHash {
            scheme: SCHEME,
            reason: "expected $7$iterations$salt$hash",
        });
    };
    let iterations =
        iterations
            .parse::<u32>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or(LineError::InvalidHash {
                scheme: SCHEME,
                reason: "the iteration count is not a number from 1 to 4294967295",
            })?;
    let (salt, hash) = decode_mosquitto_salt_and_hash(SCHEME, salt, hash)?;
    Ok(StoredHash::MosquittoPbkdf2 {
        iterations,
        salt,
        hash,
    })
}

/// `salt$hash`, after the `$6$`.
fn parse_mosquitto_sha512(rest: &str) -> Result<StoredHash, LineError> {
    const SCHEME: &str = "mosquitto $6$";
    let Some((salt, hash)) = rest.split_once('$') else {
        return Err(LineError::InvalidHash {
            scheme: SCHEME,
            reason: "expected $6$salt$hash",
        });
    };
    let (salt, hash) = decode_mosquitto_salt_and_hash(SCHEME, salt, hash)?;
    Ok(StoredHash::MosquittoSha512 { salt, hash })
}

/// Mosquitto writes both in standard, padded base64 (OpenSSL's encoder).
fn decode_mosquitto_salt_and_hash(
    scheme: &'static str,
    salt: &str,
    hash: &str,
) -> Result<([u8; MOSQUITTO_SALT_LEN], [u8; MOSQUITTO_HASH_LEN]), LineError> {
    let mut salt_bytes = [0u8; MOSQUITTO_SALT_LEN];
    let mut hash_bytes = [0u8; MOSQUITTO_HASH_LEN];
    // `decode` fails when the output does not fit, and returns what it wrote otherwise.
    let salt_ok = Base64::decode(salt, &mut salt_bytes)
        .is_ok_and(|decoded| decoded.len() == MOSQUITTO_SALT_LEN);
    if !salt_ok {
        return Err(LineError::InvalidHash {
            scheme,
            reason: "the salt is not 12 bytes in base64",
        });
    }
    let hash_ok = Base64::decode(hash, &mut hash_bytes)
        .is_ok_and(|decoded| decoded.len() == MOSQUITTO_HASH_LEN);
    if !hash_ok {
        return Err(LineError::InvalidHash {
            scheme,
            reason: "the hash is not 64 bytes in base64",
        });
    }
    Ok((salt_bytes, hash_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Made by `mosquitto_passwd -b -c FILE alice 'correct horse'` (Mosquitto 2.0.11, Debian 12).
    const MOSQUITTO_7_LINE: &str = "alice:$7$101$RU9JcjmTSD/BW0BH$Yauq7ivTMzP/Xiuvl16R3XeaCYzfUE1MS4VBZ87q4nGng87qadpoNtYHFlWdzpl+GM0YXGgzla4OZJZ17cYaKg==";
    /// `mosquitto_passwd -H sha512 -b FILE bob 'battery staple'` (the same Mosquitto).
    const MOSQUITTO_6_LINE: &str = "bob:$6$WQ8GM8P2VtWQBj28$vaZ4XLekBVTGbbWP2BspqbyCRs5tBUL7Gr9baj9+VUnMxt7xWo5FeWr43t8lLAbcCTW8x6sXSo/rc7BjykMTkQ==";
    /// `mosquitto_passwd -I 1000 -b FILE carol 'p@ss:wörd'`.
    const MOSQUITTO_7_1000_LINE: &str = "carol:$7$1000$GDw1yWWXrN7nmcTi$6iP7gudefZ1qgG+i1e79lH4dJ3aLmCEixN2M3UuwZHhL/LShl2vEICFpC1cjqtdWiWzz9YYkG7Cgp4ogycyteg==";

    /// "secret" with the salt "coolpy7-salt", from the documented algorithms by Python's hashlib:
    /// `pbkdf2_hmac('sha512', pw, salt, 101, 64)` and `sha512(pw + salt)`.
    const PBKDF2_VECTOR: &str = "$7$101$Y29vbHB5Ny1zYWx0$XmreR2qJ9lw1xtwGMJbbq2wc8yWSZeJ1HPKVxl1dR60QSO0npSmnCWZpGDTV5/jAEKEkz20HbHD6bIzU/dEloA==";
    const SHA512_VECTOR: &str = "$6$Y29vbHB5Ny1zYWx0$9Smly9S5cCnehCGcXtoCSwi51bWjW05MML3DSrLP9waP1S1S/a2IMn6BzZzMTdtv+hPgJAWBc0R6ieSKvm+7ZQ==";
    /// "secret" by the reference implementation's CLI:
    /// `echo -n secret | argon2 coolpy7-salt-16b -id -k 19456 -t 2 -p 1 -l 32 -e`.
    const ARGON2ID_VECTOR: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$Y29vbHB5Ny1zYWx0LTE2Yg$LCPTia9FdlqZLynqWpxCvteZduFXYPDeMYMM+E/U4t8";

    fn file(text: &str) -> PasswordFile {
        PasswordFile::parse(text).expect("valid password file")
    }

    fn line_error(text: &str) -> (usize, LineError) {
        match PasswordFile::parse(text) {
            Err(PasswordFileError::Line { line, problem }) => (line, problem),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn password_file_is_send_sync_and_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<PasswordFile>();
        assert_send_sync::<std::sync::Arc<PasswordFile>>();
    }

    #[test]
    fn argon2id_reference_vector_verifies() {
        let passwords = file(&format!("dave:{ARGON2ID_VECTOR}\n"));
        assert!(passwords.verify("dave", b"secret"));
        assert!(!passwords.verify("dave", b"Secret"));
        assert!(!passwords.verify("dave", b""));
    }

    #[test]
    fn mosquitto_pbkdf2_vectors_verify() {
        let passwords = file(&format!(
            "{MOSQUITTO_7_LINE}\n{MOSQUITTO_7_1000_LINE}\nerin:{PBKDF2_VECTOR}\n"
        ));
        assert!(passwords.verify("alice", b"correct horse"));
        assert!(!passwords.verify("alice", b"correct horse "));
        assert!(passwords.verify("carol", "p@ss:wörd".as_bytes()));
        assert!(!passwords.verify("carol", b"p@ss:word"));
        assert!(passwords.verify("erin", b"secret"));
        assert!(!passwords.verify("erin", b"secreT"));
    }

    #[test]
    fn mosquitto_sha512_vectors_verify() {
        let passwords = file(&format!("{MOSQUITTO_6_LINE}\nfrank:{SHA512_VECTOR}\n"));
        assert!(passwords.verify("bob", b"battery staple"));
        assert!(!passwords.verify("bob", b"battery"));
        assert!(passwords.verify("frank", b"secret"));
        assert!(!passwords.verify("frank", b"secret\0"));
    }

    #[test]
    fn a_password_is_checked_against_its_own_users_hash_only() {
        let passwords = file(&format!("{MOSQUITTO_6_LINE}\nfrank:{SHA512_VECTOR}\n"));
        assert!(!passwords.verify("bob", b"secret"));
        assert!(!passwords.verify("frank", b"battery staple"));
    }

    #[test]
    fn unknown_users_are_refused() {
        let passwords = file(&format!("{MOSQUITTO_6_LINE}\n"));
        assert!(!passwords.verify("mallory", b"battery staple"));
        assert!(!passwords.verify("", b""));
        assert!(!passwords.verify("Bob", b"battery staple"));
        assert!(!file("").verify("bob", b"battery staple"));
    }

    #[test]
    fn the_decoy_has_the_cost_most_users_have() {
        let mixed = file(&format!(
            "{MOSQUITTO_6_LINE}\n{MOSQUITTO_7_LINE}\n{MOSQUITTO_7_1000_LINE}\nerin:{PBKDF2_VECTOR}\n"
        ));
        assert!(matches!(
            mixed.decoy,
            StoredHash::MosquittoPbkdf2 {
                iterations: 101,
                ..
            }
        ));
        // A tie goes to the first in the file.
        let tie = file(&format!("{MOSQUITTO_6_LINE}\n{MOSQUITTO_7_LINE}\n"));
        assert!(matches!(tie.decoy, StoredHash::MosquittoSha512 { .. }));
        let empty = file("# nobody yet\n");
        assert!(empty.is_empty());
        assert!(
            matches!(empty.decoy, StoredHash::Argon2id { ref params, .. }
            if params.m_cost() == ARGON2_MEMORY_KIB && params.t_cost() == ARGON2_PASSES)
        );
    }

    #[test]
    fn comments_blank_lines_whitespace_and_crlf_are_ignored() {
        let text = format!(
            "# users\n\n   \n  # indented comment\r\n {MOSQUITTO_6_LINE}  \r\nerin :  {PBKDF2_VECTOR}"
        );
        let passwords = file(&text);
        assert_eq!(passwords.len(), 2);
        assert!(!passwords.is_empty());
        assert!(passwords.verify("bob", b"battery staple"));
        assert!(passwords.verify("erin", b"secret"));
    }

    #[test]
    fn parse_errors_name_the_line_and_not_the_hash() {
        let cases = [
            (format!("# c\n{MOSQUITTO_6_LINE}\nno colon here\n"), 3),
            (format!("\n:{SHA512_VECTOR}\n"), 2),
            (format!("{MOSQUITTO_6_LINE}\n\nbob:{SHA512_VECTOR}\n"), 3),
            ("alice:plaintext-password\n".to_string(), 1),
            ("# x\n# y\nalice:$argon2i$v=19$m=19456,t=2,p=1$Y29vbHB5Ny1zYWx0LTE2Yg$LCPTia9FdlqZLynqWpxCvteZduFXYPDeMYMM+E/U4t8\n".to_string(), 3),
        ];
        for (text, expected_line) in &cases {
            let err = PasswordFile::parse(text).expect_err(text);
            assert_eq!(err.line(), Some(*expected_line), "{text:?}: {err}");
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("line {expected_line}: ")),
                "{message}"
            );
            assert!(
                !message.contains("LCPTia9F") && !message.contains("9Smly9S5"),
                "{message}"
            );
            assert!(!message.contains("plaintext-password"), "{message}");
        }
        assert_eq!(line_error("no colon here").1, LineError::MissingColon);
        assert_eq!(
            line_error(&format!(" :{SHA512_VECTOR}")).1,
            LineError::EmptyUser
        );
        assert_eq!(
            line_error(&format!("{MOSQUITTO_6_LINE}\n{MOSQUITTO_6_LINE}")),
            (
                2,
                LineError::DuplicateUser {
                    user: "bob".to_string(),
                    first_line: 1
                }
            )
        );
        assert_eq!(line_error("a:plain").1, LineError::UnsupportedHash);
        assert_eq!(line_error("a:").1, LineError::UnsupportedHash);
    }

    #[test]
    fn malformed_hashes_of_known_kinds_are_refused() {
        let argon2_cases = [
            "$argon2id$v=16$m=19456,t=2,p=1$Y29vbHB5Ny1zYWx0LTE2Yg$LCPTia9FdlqZLynqWpxCvteZduFXYPDeMYMM+E/U4t8",
            "$argon2id$m=19456,t=2,p=1$Y29vbHB5Ny1zYWx0LTE2Yg$LCPTia9FdlqZLynqWpxCvteZduFXYPDeMYMM+E/U4t8",
            "$argon2id$v=19$m=19456,t=2,p=1$Y29vbHB5Ny1zYWx0LTE2Yg",
            "$argon2id$v=19$m=19456,t=0,p=1$Y29vbHB5Ny1zYWx0LTE2Yg$LCPTia9FdlqZLynqWpxCvteZduFXYPDeMYMM+E/U4t8",
            "$argon2id$v=19$m=2097152,t=2,p=1$Y29vbHB5Ny1zYWx0LTE2Yg$LCPTia9FdlqZLynqWpxCvteZduFXYPDeMYMM+E/U4t8",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$LCPTia9FdlqZLynqWpxCvteZduFXYPDeMYMM+E/U4t8",
            "$argon2id$v=19$m=19456,t=2,p=1$Y29vbHB5Ny1zYWx0LTE2Yg$not*base64",
        ];
        for hash in argon2_cases {
            assert!(
                matches!(
                    line_error(&format!("u:{hash}")).1,
                    LineError::InvalidHash {
                        scheme: "argon2id",
                        ..
                    }
                ),
                "{hash}"
            );
        }
        let mosquitto_cases = [
            // No iteration count, zero, not a number.
            "$7$Y29vbHB5Ny1zYWx0$9Smly9S5cCnehCGcXtoCSwi51bWjW05MML3DSrLP9waP1S1S/a2IMn6BzZzMTdtv+hPgJAWBc0R6ieSKvm+7ZQ==",
            "$7$0$Y29vbHB5Ny1zYWx0$9Smly9S5cCnehCGcXtoCSwi51bWjW05MML3DSrLP9waP1S1S/a2IMn6BzZzMTdtv+hPgJAWBc0R6ieSKvm+7ZQ==",
            "$7$x$Y29vbHB5Ny1zYWx0$9Smly9S5cCnehCGcXtoCSwi51bWjW05MML3DSrLP9waP1S1S/a2IMn6BzZzMTdtv+hPgJAWBc0R6ieSKvm+7ZQ==",
            // A salt of 9 bytes, a hash of 3.
            "$6$Y29vbHB5Ny1z$9Smly9S5cCnehCGcXtoCSwi51bWjW05MML3DSrLP9waP1S1S/a2IMn6BzZzMTdtv+hPgJAWBc0R6ieSKvm+7ZQ==",
            "$6$Y29vbHB5Ny1zYWx0$YWJj",
            // Unpadded, and an extra field.
            "$6$Y29vbHB5Ny1zYWx0$9Smly9S5cCnehCGcXtoCSwi51bWjW05MML3DSrLP9waP1S1S/a2IMn6BzZzMTdtv+hPgJAWBc0R6ieSKvm+7ZQ",
            "$6$Y29vbHB5Ny1zYWx0$9Smly9S5cCnehCGcXtoCSwi51bWjW05MML3DSrLP9waP1S1S/a2IMn6BzZzMTdtv+hPgJAWBc0R6ieSKvm+7ZQ==$",
            "$6$nosalt",
        ];
        for hash in mosquitto_cases {
            assert!(
                matches!(
                    line_error(&format!("u:{hash}")).1,
                    LineError::InvalidHash { .. }
                ),
                "{hash}"
            );
        }
    }

    #[test]
    fn load_reads_a_file_and_names_a_missing_one() {
        let dir =
            std::env::temp_dir().join(format!("coolpy7-password-file-{}-load", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the temp dir");
        let path = dir.join("passwords");
        std::fs::write(&path, format!("{MOSQUITTO_7_LINE}\n")).expect("write the file");
        let loaded = PasswordFile::load(&path);
        let missing = PasswordFile::load(&dir.join("missing"));
        std::fs::remove_dir_all(&dir).expect("remove the temp dir");

        assert!(loaded.expect("load").verify("alice", b"correct horse"));
        let err = missing.expect_err("a missing file");
        assert!(matches!(err, PasswordFileError::Read { .. }));
        assert!(err.to_string().contains("missing"), "{err}");
        assert_eq!(err.line(), None);
    }

    #[test]
    fn debug_shows_neither_users_nor_hashes() {
        let shown = format!("{:?}", file(&format!("{MOSQUITTO_6_LINE}\n")));
        assert!(
            !shown.contains("bob") && !shown.contains("WQ8GM8P2"),
            "{shown}"
        );
        assert!(shown.contains("users: 1"), "{shown}");
    }

    #[test]
    fn hash_password_makes_an_owasp_argon2id_string_with_a_fresh_salt() {
        let first = hash_password(b"hunter2").expect("hash");
        let second = hash_password(b"hunter2").expect("hash");
        assert!(
            first.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{first}"
        );
        assert_ne!(first, second, "each hash has its own salt");
        let passwords = file(&format!("u:{first}\nv:{second}\n"));
        assert!(passwords.verify("u", b"hunter2"));
        assert!(passwords.verify("v", b"hunter2"));
        assert!(!passwords.verify("u", b"hunter3"));
    }

    #[test]
    fn set_user_replaces_in_place_and_keeps_every_other_byte() {
        let text = "# header\r\nalice:$6$old\n\n  # note: keep me  \nbob:$7$old\r\nbroken line\ncarol:$6$x";
        assert_eq!(
            set_user(text, "bob", "$argon2id$NEW"),
            "# header\r\nalice:$6$old\n\n  # note: keep me  \nbob:$argon2id$NEW\r\nbroken line\ncarol:$6$x"
        );
        // The last line keeps its (missing) ending.
        assert_eq!(
            set_user(text, "carol", "H"),
            "# header\r\nalice:$6$old\n\n  # note: keep me  \nbob:$7$old\r\nbroken line\ncarol:H"
        );
        // A new user is appended on a line of its own.
        assert_eq!(set_user(text, "dave", "H"), format!("{text}\ndave:H\n"));
        assert_eq!(set_user("a:1\n", "dave", "H"), "a:1\ndave:H\n");
        assert_eq!(set_user("", "dave", "H"), "dave:H\n");
        // A sloppily written line is still the user's; later duplicates go.
        assert_eq!(
            set_user(" bob : x \nalice:y\nbob:z\n", "bob", "H"),
            "bob:H\nalice:y\n"
        );
        // Comments that look like the user's line are not it.
        assert_eq!(set_user("#bob:x\n", "bob", "H"), "#bob:x\nbob:H\n");
    }

    #[test]
    fn delete_user_removes_the_users_lines_only() {
        let text = "# header\r\nalice:a\nbob:b\r\n# bob:commented\nbob:dup\ncarol:c";
        assert_eq!(
            delete_user(text, "bob").as_deref(),
            Some("# header\r\nalice:a\n# bob:commented\ncarol:c")
        );
        assert_eq!(
            delete_user(text, "carol").as_deref(),
            Some("# header\r\nalice:a\nbob:b\r\n# bob:commented\nbob:dup\n")
        );
        assert_eq!(delete_user(text, "dave"), None);
        assert_eq!(delete_user("", "dave"), None);
    }

    #[test]
    fn an_edited_file_parses_back() {
        let hash = hash_password(b"pw").expect("hash");
        let text = set_user(&format!("# c\n{MOSQUITTO_6_LINE}\n"), "new", &hash);
        let text = set_user(&text, "bob", &hash);
        let passwords = file(&text);
        assert_eq!(passwords.len(), 2);
        assert!(passwords.verify("new", b"pw"));
        assert!(passwords.verify("bob", b"pw"));
        let text = delete_user(&text, "new").expect("new is there");
        assert_eq!(file(&text).len(), 1);
    }

    #[test]
    fn check_username_accepts_what_reads_back_the_same() {
        for good in ["alice", "a b", "ユーザー", "x#y", "user@example.com"] {
            assert_eq!(check_username(good), Ok(()), "{good:?}");
            let text = set_user("", good, ARGON2ID_VECTOR);
            assert!(file(&text).verify(good, b"secret"), "{good:?}");
        }
        assert_eq!(check_username(""), Err(UsernameError::Empty));
        assert_eq!(check_username("a:b"), Err(UsernameError::Colon));
        assert_eq!(check_username("a\nb"), Err(UsernameError::ControlCharacter));
        assert_eq!(check_username("a\tb"), Err(UsernameError::ControlCharacter));
        assert_eq!(
            check_username(" a"),
            Err(UsernameError::SurroundingWhitespace)
        );
        assert_eq!(
            check_username("a "),
            Err(UsernameError::SurroundingWhitespace)
        );
        assert_eq!(check_username("#a"), Err(UsernameError::CommentMark));
        assert_eq!(
            check_username(&"x".repeat(65_536)),
            Err(UsernameError::TooLong)
        );
    }

    proptest! {
        // argon2id at OWASP's cost takes tens of milliseconds (much more unoptimised): few cases.
        #![proptest_config(ProptestConfig::with_cases(4))]
        #[test]
        fn hash_password_then_verify_round_trips(
            password in proptest::collection::vec(any::<u8>(), 0..64),
            other in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let hash = hash_password(&password).expect("hash");
            let passwords = file(&format!("user:{hash}\n"));
            prop_assert!(passwords.verify("user", &password));
            prop_assert_eq!(passwords.verify("user", &other), other == password);
        }
    }
}
