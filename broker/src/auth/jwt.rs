//! JWT authentication (`-as 1`): the MQTT password is a JSON Web Token, the username any
//! non-empty string, as in Coolpy7.
//!
//! The key is configured once: `-jsk` gives an HMAC secret ([`JwtVerifier::from_secret`]),
//! `-jpk` a PEM public key ([`JwtVerifier::from_public_key_pem`]). The key fixes which
//! algorithms a token may name, so a token cannot choose how it is checked (`alg: none`, or an
//! HMAC keyed with the public key's bytes, are refused). Each CONNECT's password then goes
//! through [`JwtVerifier::verify`] with the broker's clock: the signature first, then `nbf` and
//! `exp`, then the optional `acl` claim. What comes out, [`VerifiedToken`], says until when the
//! connection may stay and what the client may do.
//!
//! `jsonwebtoken` parses the token and checks its header; the signatures are computed by `ring`
//! (which rustls already builds), plugged in as jsonwebtoken's process-wide `CryptoProvider`.
//! Claims are checked here rather than by jsonwebtoken's `Validation`, for three reasons: `exp`
//! is optional (Coolpy7's tokens may lack it), a token is refused *at* its `exp` (RFC 7519:
//! "on or after"), and the time is the caller's, so that it is the one the connection uses.
//!
//! Nothing here logs, and no error or `Debug` output carries the token or the key.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::RSAPublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::ClientAcl;

/// Checks tokens against the one configured key. Cheap to share: verification takes `&self`.
pub struct JwtVerifier {
    /// Zeroed on drop by jsonwebtoken (it holds the HMAC secret under `-jsk`).
    key: DecodingKey,
    /// The algorithms the key allows; nothing else about the claims (see the module doc).
    validation: Validation,
}

/// What a token that verified says about its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The token's `exp`: the connection is to be closed then. `None` when the token has no
    /// `exp`: it stays valid as long as the key does.
    pub expires_at: Option<SystemTime>,
    /// The token's `acl` claim (EMQX 4's format), every entry a valid topic filter.
    pub acl: Option<ClientAcl>,
    /// The token's `username` claim: the only MQTT username the token may be used with.
    pub username: Option<String>,
}

/// Why a token was refused: for the broker's debug log, never shown to the client beyond "bad
/// credentials". No variant carries any part of the token but, for a bad `acl`, the offending
/// filter, which was signed by the issuer and is no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's signature does not match the configured key")]
    BadSignature,
    #[error("the token's algorithm is not one the configured key allows")]
    WrongAlgorithm,
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's acl claim is invalid: {0}")]
    BadAcl(String),
}

/// Why `-jsk` or `-jpk` cannot be used. No variant carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtKeyError {
    #[error("the JWT secret is empty")]
    EmptySecret,
    #[error("the JWT public key is not PEM")]
    NotPem,
    #[error(
        "the JWT key file holds a {0:?} block; it needs the public key \
         (\"PUBLIC KEY\" or \"RSA PUBLIC KEY\")"
    )]
    NotAPublicKey(String),
    #[error("the JWT public key cannot be parsed: {0}")]
    Malformed(&'static str),
    #[error(
        "the JWT public key's type ({0}) is not supported: RSA, EC P-256, EC P-384 or Ed25519"
    )]
    Unsupported(String),
    #[error("the JWT RSA public key has {0} bits; 2048 to 8192 are supported")]
    RsaKeySize(usize),
}

/// The algorithms each kind of key accepts. RFC 8725 §3.1: the key, not the token, decides.
const HMAC_ALGORITHMS: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// ring verifies RSA signatures of keys from 2048 to 8192 bits only.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

impl JwtVerifier {
    /// A verifier for tokens signed with HS256, HS384 or HS512 under `secret` (`-jsk`).
    pub fn from_secret(secret: &[u8]) -> Result<JwtVerifier, JwtKeyError> {
        if secret.is_empty() {
            return Err(JwtKeyError::EmptySecret);
        }
        let key = DecodingKey::from_secret(secret).map_err(|_| JwtKeyError::EmptySecret)?;
        Ok(JwtVerifier::new(key, HMAC_ALGORITHMS))
    }

    /// A verifier for tokens signed with the private half of the PEM public key `pem` (`-jpk`):
    /// a `PUBLIC KEY` (SubjectPublicKeyInfo) block, or an `RSA PUBLIC KEY` (PKCS#1) one. The
    /// key's type fixes the algorithms: RSA accepts RS256/384/512 and PS256/384/512, EC P-256
    /// ES256, EC P-384 ES384, Ed25519 EdDSA; any other key is an error.
    pub fn from_public_key_pem(pem: &[u8]) -> Result<JwtVerifier, JwtKeyError> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem).map_err(|_| JwtKeyError::NotPem)?;
        match block.label.as_str() {
            "PUBLIC KEY" => JwtVerifier::from_spki(&block.contents),
            "RSA PUBLIC KEY" => JwtVerifier::from_rsa_pkcs1(&block.contents),
            other => Err(JwtKeyError::NotAPublicKey(shortened(other, 40).to_owned())),
        }
    }

    fn from_spki(der: &[u8]) -> Result<JwtVerifier, JwtKeyError> {
        let (_, spki) = SubjectPublicKeyInfo::from_der(der)
            .map_err(|_| JwtKeyError::Malformed("not a SubjectPublicKeyInfo"))?;
        let key_type = &spki.algorithm.algorithm;
        let key_bytes: &[u8] = &spki.subject_public_key.data;
        if *key_type == OID_PKCS1_RSAENCRYPTION {
            JwtVerifier::from_rsa_pkcs1(key_bytes)
        } else if *key_type == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|parameters| parameters.as_oid().ok())
                .ok_or(JwtKeyError::Malformed("an EC key without a named curve"))?;
            // ring takes the uncompressed point (0x04, x, y), as OpenSSL writes it.
            let (algorithm, point_len) = if curve == OID_EC_P256 {
                (Algorithm::ES256, 65)
            } else if curve == OID_NIST_EC_P384 {
                (Algorithm::ES384, 97)
            } else {
                return Err(JwtKeyError::Unsupported(format!("EC curve {curve}")));
            };
            if key_bytes.len() != point_len || key_bytes.first() != Some(&4) {
                return Err(JwtKeyError::Malformed("the EC point is not uncompressed"));
            }
            Ok(JwtVerifier::new(
                DecodingKey::from_ec_der(key_bytes),
                &[algorithm],
            ))
        } else if *key_type == OID_SIG_ED25519 {
            if key_bytes.len() != 32 {
                return Err(JwtKeyError::Malformed("an Ed25519 key is 32 bytes"));
            }
            Ok(JwtVerifier::new(
                DecodingKey::from_ed_der(key_bytes),
                &[Algorithm::EdDSA],
            ))
        } else {
            Err(JwtKeyError::Unsupported(format!("key type {key_type}")))
        }
    }

    /// `der` is a PKCS#1 RSAPublicKey, the form ring verifies with.
    fn from_rsa_pkcs1(der: &[u8]) -> Result<JwtVerifier, JwtKeyError> {
        let (_, rsa) = RSAPublicKey::from_der(der)
            .map_err(|_| JwtKeyError::Malformed("not an RSA public key"))?;
        // Checked here so that a key ring would refuse at every token fails at start instead.
        let bits = bit_length(rsa.modulus);
        if !RSA_BITS.contains(&bits) {
            return Err(JwtKeyError::RsaKeySize(bits));
        }
        Ok(JwtVerifier::new(
            DecodingKey::from_rsa_der(der),
            RSA_ALGORITHMS,
        ))
    }

    fn new(key: DecodingKey, algorithms: &[Algorithm]) -> JwtVerifier {
        ring_provider::install();
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.to_vec();
        // Time and audience are checked in `verify` (or not at all, for `aud`/`iss`/`sub`:
        // Coolpy7 never checked them, and the username is the client's to choose).
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        JwtVerifier { key, validation }
    }

    /// Checks `token` (the CONNECT password) at `now`: its signature under the configured key
    /// with an algorithm that key allows, then `nbf` (refused before it) and `exp` (refused at
    /// or after it), then the `acl` claim.
    ///
    /// There is no leeway: the broker's clock is the one that counts, since it is also the
    /// clock that closes the connection at `exp`. Issuers should allow for skew themselves
    /// (an `nbf` a little in the past, an `exp` not too tight).
    pub fn verify(&self, token: &[u8], now: SystemTime) -> Result<VerifiedToken, JwtError> {
        let token = std::str::from_utf8(token).map_err(|_| JwtError::Malformed("not UTF-8"))?;
        let decoded = jsonwebtoken::decode::<Value>(token, &self.key, &self.validation)
            .map_err(|error| self.refusal(error.kind(), token))?;
        let Value::Object(claims) = decoded.claims else {
            return Err(JwtError::Malformed("the claims are not a JSON object"));
        };

        let not_before = numeric_date(&claims, "nbf")?;
        if not_before.is_some_and(|not_before| now < not_before) {
            return Err(JwtError::NotYetValid);
        }
        let expires_at = numeric_date(&claims, "exp")?;
        if expires_at.is_some_and(|expires_at| now >= expires_at) {
            return Err(JwtError::Expired);
        }

        let acl = match claims.get("acl") {
            None | Some(Value::Null) => None,
            Some(value) => {
                let acl = ClientAcl::deserialize(value).map_err(|_| {
                    JwtError::BadAcl(
                        "not an object of \"pub\", \"sub\" and \"all\" lists of strings".into(),
                    )
                })?;
                acl.validate().map_err(JwtError::BadAcl)?;
                Some(acl)
            }
        };
        let username = match claims.get("username") {
            None | Some(Value::Null) => None,
            Some(Value::String(username)) => Some(username.clone()),
            Some(_) => return Err(JwtError::Malformed("the username claim is not a string")),
        };
        Ok(VerifiedToken {
            expires_at,
            acl,
            username,
        })
    }

    /// Turns jsonwebtoken's error into ours. Its JSON errors quote the input, so none of its
    /// text is kept.
    fn refusal(&self, kind: &ErrorKind, token: &str) -> JwtError {
        match kind {
            ErrorKind::InvalidSignature => JwtError::BadSignature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::MissingAlgorithm => JwtError::WrongAlgorithm,
            // jsonwebtoken only knows the algorithms it implements: a header naming another one
            // (`none`) fails to parse at all, and is told apart here.
            ErrorKind::Json(_) if self.names_other_algorithm(token) => JwtError::WrongAlgorithm,
            ErrorKind::Json(_) => JwtError::Malformed("the header or claims are not valid JSON"),
            ErrorKind::Base64(_) => JwtError::Malformed("a part is not base64url"),
            ErrorKind::Utf8(_) => JwtError::Malformed("a part is not UTF-8"),
            ErrorKind::InvalidToken => {
                JwtError::Malformed("not a compact JWS, or a critical header is not supported")
            }
            _ => JwtError::Malformed("refused by the JWT decoder"),
        }
    }

    /// Whether the token's header is a JSON object whose `alg` is a string naming none of the
    /// algorithms the key allows.
    fn names_other_algorithm(&self, token: &str) -> bool {
        #[derive(Deserialize)]
        struct Header {
            alg: String,
        }
        use base64::Engine as _;
        let Some((header, _)) = token.split_once('.') else {
            return false;
        };
        let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
            return false;
        };
        let Ok(header) = serde_json::from_slice::<Header>(&json) else {
            return false;
        };
        match header.alg.parse::<Algorithm>() {
            Ok(algorithm) => !self.validation.algorithms.contains(&algorithm),
            Err(_) => true,
        }
    }
}

impl fmt::Debug for JwtVerifier {
    /// The algorithms only: the key may be a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

/// A NumericDate claim (RFC 7519 §2: seconds since the epoch, possibly fractional), if present.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<SystemTime>, JwtError> {
    let seconds = match claims.get(name) {
        None => return Ok(None),
        Some(Value::Number(seconds)) => seconds.as_f64(),
        Some(_) => None,
    };
    let malformed = || {
        JwtError::Malformed(match name {
            "exp" => "exp is not a time (seconds since 1970)",
            _ => "nbf is not a time (seconds since 1970)",
        })
    };
    let since_epoch = seconds
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .ok_or_else(malformed)?;
    UNIX_EPOCH
        .checked_add(since_epoch)
        .map(Some)
        .ok_or_else(malformed)
}

/// The number of significant bits of a big-endian unsigned integer.
fn bit_length(bytes: &[u8]) -> usize {
    let significant = match bytes.iter().position(|&byte| byte != 0) {
        Some(first) => &bytes[first..],
        None => return 0,
    };
    significant.len() * 8 - significant[0].leading_zeros() as usize
}

/// At most `limit` characters of a string read from a file, for an error message.
fn shortened(text: &str, limit: usize) -> &str {
    match text.char_indices().nth(limit) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// jsonwebtoken's signature checks, done by ring.
///
/// jsonwebtoken 10 and later compute signatures through a process-wide `CryptoProvider`, and
/// ship two (RustCrypto's and aws-lc-rs'), neither of which the broker otherwise builds. This
/// one maps each JWS algorithm to ring's primitive and nothing more; it verifies only (the
/// broker never issues tokens) and supports no JWK helpers (the broker never reads JWKs).
mod ring_provider {
    use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
    use jsonwebtoken::errors::{Error, ErrorKind};
    use jsonwebtoken::signature::{self, Verifier};
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
    use ring::{hmac, signature as ring_signature};

    static PROVIDER: CryptoProvider = CryptoProvider {
        signer_factory: no_signer,
        verifier_factory: verifier,
        // Only reached through JWK functions, which the broker never calls.
        key_utils: KeyUtils::new_unimplemented(),
    };

    /// Makes ring jsonwebtoken's provider, unless one is already installed: the first one
    /// stays (jsonwebtoken allows one per process), and any full provider checks the same
    /// algorithms.
    pub(super) fn install() {
        let _already_installed = PROVIDER.install_default();
    }

    fn no_signer(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
        Err(ErrorKind::Provider("the broker verifies tokens and never signs any".into()).into())
    }

    enum Check {
        Hmac(hmac::Key),
        /// `key` is what ring's algorithm parses: PKCS#1 for RSA, the uncompressed point for
        /// ECDSA, the 32 bytes for Ed25519.
        PublicKey {
            algorithm: &'static dyn ring_signature::VerificationAlgorithm,
            key: Vec<u8>,
        },
    }

    struct RingVerifier {
        algorithm: Algorithm,
        check: Check,
    }

    fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
        if key.family() != algorithm.family() {
            return Err(ErrorKind::InvalidAlgorithm.into());
        }
        let bytes = key.try_get_as_bytes()?;
        let public =
            |algorithm: &'static dyn ring_signature::VerificationAlgorithm| Check::PublicKey {
                algorithm,
                key: bytes.to_vec(),
            };
        let check = match algorithm {
            Algorithm::HS256 => Check::Hmac(hmac::Key::new(hmac::HMAC_SHA256, bytes)),
            Algorithm::HS384 => Check::Hmac(hmac::Key::new(hmac::HMAC_SHA384, bytes)),
            Algorithm::HS512 => Check::Hmac(hmac::Key::new(hmac::HMAC_SHA512, bytes)),
            Algorithm::RS256 => public(&ring_signature::RSA_PKCS1_2048_8192_SHA256),
            Algorithm::RS384 => public(&ring_signature::RSA_PKCS1_2048_8192_SHA384),
            Algorithm::RS512 => public(&ring_signature::RSA_PKCS1_2048_8192_SHA512),
            Algorithm::PS256 => public(&ring_signature::RSA_PSS_2048_8192_SHA256),
            Algorithm::PS384 => public(&ring_signature::RSA_PSS_2048_8192_SHA384),
            Algorithm::PS512 => public(&ring_signature::RSA_PSS_2048_8192_SHA512),
            // JWS's ECDSA signatures are r || s, ring's FIXED format (not ASN.1).
            Algorithm::ES256 => public(&ring_signature::ECDSA_P256_SHA256_FIXED),
            Algorithm::ES384 => public(&ring_signature::ECDSA_P384_SHA384_FIXED),
            Algorithm::EdDSA => public(&ring_signature::ED25519),
            _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
        };
        Ok(Box::new(RingVerifier {
            algorithm: *algorithm,
            check,
        }))
    }

    impl Verifier<Vec<u8>> for RingVerifier {
        fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
            let verified = match &self.check {
                // Constant-time comparison.
                Check::Hmac(key) => hmac::verify(key, message, signature),
                Check::PublicKey { algorithm, key } => {
                    ring_signature::UnparsedPublicKey::new(*algorithm, key)
                        .verify(message, signature)
                }
            };
            verified.map_err(|_| signature::Error::new())
        }
    }

    impl JwtVerifier for RingVerifier {
        fn algorithm(&self) -> Algorithm {
            self.algorithm
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use hmac::{KeyInit, Mac};
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"coolpy7-test-secret";

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    /// A compact JWS of `header` and `claims`, signed by `sign` over `header.claims`.
    fn token(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = sign(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// An HMAC token, signed with the `hmac` crate (not ring, which verifies).
    fn hmac_token(alg: &str, secret: &[u8], claims: &Value) -> String {
        fn mac<M: Mac + KeyInit>(secret: &[u8], input: &[u8]) -> Vec<u8> {
            let mut mac = <M as KeyInit>::new_from_slice(secret).unwrap();
            mac.update(input);
            mac.finalize().into_bytes().to_vec()
        }
        let header = json!({"alg": alg, "typ": "JWT"});
        token(&header, claims, |input| match alg {
            "HS256" => mac::<hmac::Hmac<sha2::Sha256>>(secret, input),
            "HS384" => mac::<hmac::Hmac<sha2::Sha384>>(secret, input),
            "HS512" => mac::<hmac::Hmac<sha2::Sha512>>(secret, input),
            other => panic!("not an HMAC algorithm: {other}"),
        })
    }

    fn secret_verifier() -> JwtVerifier {
        JwtVerifier::from_secret(SECRET).unwrap()
    }

    #[test]
    fn hmac_tokens_verify_with_each_hash() {
        let verifier = secret_verifier();
        for alg in ["HS256", "HS384", "HS512"] {
            let token = hmac_token(alg, SECRET, &json!({"sub": "a", "exp": 2_000}));
            let verified = verifier.verify(token.as_bytes(), at(1_000)).unwrap();
            assert_eq!(verified.expires_at, Some(at(2_000)), "{alg}");
            assert_eq!(verified.acl, None);
        }
    }

    #[test]
    fn a_token_without_exp_does_not_expire() {
        let token = hmac_token("HS256", SECRET, &json!({"sub": "a"}));
        let verified = secret_verifier()
            .verify(token.as_bytes(), at(u32::MAX as u64 * 4))
            .unwrap();
        assert_eq!(verified.expires_at, None);
    }

    #[test]
    fn expiry_is_refused_at_exp_without_leeway() {
        let verifier = secret_verifier();
        let token = hmac_token("HS256", SECRET, &json!({"exp": 1_000}));
        let just_before = at(1_000) - Duration::from_millis(1);
        assert!(verifier.verify(token.as_bytes(), just_before).is_ok());
        assert_eq!(
            verifier.verify(token.as_bytes(), at(1_000)),
            Err(JwtError::Expired)
        );
        assert_eq!(
            verifier.verify(token.as_bytes(), at(1_001)),
            Err(JwtError::Expired)
        );
    }

    #[test]
    fn fractional_exp_is_honoured() {
        let token = hmac_token("HS256", SECRET, &json!({"exp": 1_000.5}));
        let verified = secret_verifier()
            .verify(token.as_bytes(), at(1_000))
            .unwrap();
        assert_eq!(
            verified.expires_at,
            Some(at(1_000) + Duration::from_millis(500))
        );
    }

    #[test]
    fn not_before_is_refused_until_nbf() {
        let verifier = secret_verifier();
        let token = hmac_token("HS256", SECRET, &json!({"nbf": 1_000, "exp": 2_000}));
        assert_eq!(
            verifier.verify(token.as_bytes(), at(999)),
            Err(JwtError::NotYetValid)
        );
        assert!(verifier.verify(token.as_bytes(), at(1_000)).is_ok());
    }

    #[test]
    fn time_claims_that_are_not_numbers_are_refused() {
        let verifier = secret_verifier();
        for claims in [
            json!({"exp": "2000"}),
            json!({"exp": -1}),
            json!({"exp": null}),
            json!({"nbf": [1]}),
            json!({"exp": 1e300}),
        ] {
            let token = hmac_token("HS256", SECRET, &claims);
            assert!(
                matches!(
                    verifier.verify(token.as_bytes(), at(1)),
                    Err(JwtError::Malformed(_))
                ),
                "{claims}"
            );
        }
    }

    #[test]
    fn a_wrong_secret_is_a_bad_signature() {
        let token = hmac_token("HS256", b"another secret", &json!({"sub": "a"}));
        assert_eq!(
            secret_verifier().verify(token.as_bytes(), at(1)),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn a_tampered_claim_is_a_bad_signature() {
        let token = hmac_token("HS256", SECRET, &json!({"exp": 1_000}));
        let mut parts: Vec<&str> = token.split('.').collect();
        let later = URL_SAFE_NO_PAD.encode(json!({"exp": 9_000}).to_string());
        parts[1] = &later;
        assert_eq!(
            secret_verifier().verify(parts.join(".").as_bytes(), at(1)),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(r#"{"sub":"a"}"#);
        for token in [
            format!("{header}.{claims}."),
            format!("{header}.{claims}.c2ln"),
        ] {
            assert_eq!(
                secret_verifier().verify(token.as_bytes(), at(1)),
                Err(JwtError::WrongAlgorithm),
                "{token}"
            );
        }
    }

    #[test]
    fn an_hmac_token_is_refused_by_a_public_key() {
        // Algorithm confusion: HS256 keyed with the very bytes of the configured public key.
        let pem = include_bytes!("testdata/rsa.pub.pem");
        let verifier = JwtVerifier::from_public_key_pem(pem).unwrap();
        let forged = hmac_token("HS256", pem, &json!({"sub": "a"}));
        assert_eq!(
            verifier.verify(forged.as_bytes(), at(1)),
            Err(JwtError::WrongAlgorithm)
        );
    }

    #[test]
    fn a_public_key_token_is_refused_by_a_secret() {
        let token = include_str!("testdata/rs256.jwt");
        assert_eq!(
            secret_verifier().verify(token.as_bytes(), at(1)),
            Err(JwtError::WrongAlgorithm)
        );
    }

    /// Tokens signed by OpenSSL (see testdata/README.md), verified with their public keys.
    #[test]
    fn tokens_signed_elsewhere_verify() {
        let cases: [(&[u8], &str); 7] = [
            (
                include_bytes!("testdata/rsa.pub.pem"),
                include_str!("testdata/rs256.jwt"),
            ),
            (
                include_bytes!("testdata/rsa.pub.pem"),
                include_str!("testdata/rs512.jwt"),
            ),
            (
                include_bytes!("testdata/rsa.pub.pem"),
                include_str!("testdata/ps256.jwt"),
            ),
            (
                include_bytes!("testdata/rsa_pkcs1.pub.pem"),
                include_str!("testdata/rs256.jwt"),
            ),
            (
                include_bytes!("testdata/p256.pub.pem"),
                include_str!("testdata/es256.jwt"),
            ),
            (
                include_bytes!("testdata/p384.pub.pem"),
                include_str!("testdata/es384.jwt"),
            ),
            (
                include_bytes!("testdata/ed25519.pub.pem"),
                include_str!("testdata/eddsa.jwt"),
            ),
        ];
        let expected_acl = ClientAcl {
            publish: vec!["t/%c".into()],
            subscribe: vec!["t/#".into()],
            all: vec![],
        };
        for (pem, token) in cases {
            let verifier = JwtVerifier::from_public_key_pem(pem).unwrap();
            let verified = verifier.verify(token.trim().as_bytes(), at(1_900_000_000));
            assert_eq!(
                verified,
                Ok(VerifiedToken {
                    expires_at: Some(at(2_000_000_000)),
                    acl: Some(expected_acl.clone()),
                    username: None,
                }),
                "{verifier:?}"
            );
            assert_eq!(
                verifier.verify(token.trim().as_bytes(), at(2_000_000_000)),
                Err(JwtError::Expired)
            );
        }
    }

    #[test]
    fn a_token_is_refused_by_another_key_of_the_same_family() {
        // The P-256 token under the P-384 key: ES256 is not what that key allows.
        let verifier =
            JwtVerifier::from_public_key_pem(include_bytes!("testdata/p384.pub.pem")).unwrap();
        let token = include_str!("testdata/es256.jwt");
        assert_eq!(
            verifier.verify(token.as_bytes(), at(1)),
            Err(JwtError::WrongAlgorithm)
        );
        // A signature over other bytes.
        let verifier =
            JwtVerifier::from_public_key_pem(include_bytes!("testdata/rsa.pub.pem")).unwrap();
        let rs256 = include_str!("testdata/rs256.jwt");
        let rs512 = include_str!("testdata/rs512.jwt");
        let (head, _) = rs256.rsplit_once('.').unwrap();
        let (_, other_signature) = rs512.rsplit_once('.').unwrap();
        let spliced = format!("{head}.{other_signature}");
        assert_eq!(
            verifier.verify(spliced.as_bytes(), at(1)),
            Err(JwtError::BadSignature)
        );
    }

    /// Keys made by rcgen (another PEM writer) and tokens signed by ring.
    #[test]
    fn generated_ecdsa_and_ed25519_keys_verify() {
        let rng = ring::rand::SystemRandom::new();
        let claims = json!({"sub": "a", "acl": {"all": ["x/%u/#"]}});

        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .unwrap();
        let es256 = token(&json!({"alg": "ES256"}), &claims, |input| {
            signer.sign(&rng, input).unwrap().as_ref().to_vec()
        });
        let verifier = JwtVerifier::from_public_key_pem(key.public_key_pem().as_bytes()).unwrap();
        let verified = verifier.verify(es256.as_bytes(), at(1)).unwrap();
        assert_eq!(verified.acl.unwrap().all, vec!["x/%u/#".to_string()]);

        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let signer = ring::signature::Ed25519KeyPair::from_pkcs8(&key.serialize_der()).unwrap();
        let eddsa = token(&json!({"alg": "EdDSA"}), &claims, |input| {
            signer.sign(input).as_ref().to_vec()
        });
        let verifier = JwtVerifier::from_public_key_pem(key.public_key_pem().as_bytes()).unwrap();
        assert!(verifier.verify(eddsa.as_bytes(), at(1)).is_ok());
        // The EdDSA key refuses the ECDSA token.
        assert_eq!(
            verifier.verify(es256.as_bytes(), at(1)),
            Err(JwtError::WrongAlgorithm)
        );
    }

    #[test]
    fn acl_claim_is_parsed() {
        let claims = json!({
            "acl": {"pub": ["t/1"], "sub": ["t/#", "+/s"], "all": ["x/%c/#"]}
        });
        let token = hmac_token("HS256", SECRET, &claims);
        let verified = secret_verifier().verify(token.as_bytes(), at(1)).unwrap();
        assert_eq!(
            verified.acl,
            Some(ClientAcl {
                publish: vec!["t/1".into()],
                subscribe: vec!["t/#".into(), "+/s".into()],
                all: vec!["x/%c/#".into()],
            })
        );
        let token = hmac_token("HS256", SECRET, &json!({"acl": null}));
        assert_eq!(
            secret_verifier()
                .verify(token.as_bytes(), at(1))
                .unwrap()
                .acl,
            None
        );
    }

    #[test]
    fn acl_claim_with_an_invalid_filter_refuses_the_token() {
        let token = hmac_token("HS256", SECRET, &json!({"acl": {"sub": ["t/#/x"]}}));
        let error = secret_verifier()
            .verify(token.as_bytes(), at(1))
            .unwrap_err();
        assert!(
            matches!(&error, JwtError::BadAcl(reason) if reason.contains("t/#/x")),
            "{error}"
        );
        for acl in [json!({"pub": "t/1"}), json!(["t/1"]), json!({"sub": [1]})] {
            let token = hmac_token("HS256", SECRET, &json!({ "acl": acl }));
            assert!(matches!(
                secret_verifier().verify(token.as_bytes(), at(1)),
                Err(JwtError::BadAcl(_))
            ));
        }
    }

    #[test]
    fn malformed_tokens_are_refused_without_echo() {
        let verifier = secret_verifier();
        let valid = hmac_token("HS256", SECRET, &json!({"sub": "a"}));
        let claims_not_object = hmac_token("HS256", SECRET, &json!(["a"]));
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"secret-password".to_vec(),
            b"a.b".to_vec(),
            b"a.b.c.d".to_vec(),
            b"\xff\xfe.\x00.x".to_vec(),
            format!("{valid}.extra").into_bytes(),
            format!("!{valid}").into_bytes(),
            claims_not_object.into_bytes(),
        ];
        for case in cases {
            let error = verifier.verify(&case, at(1)).unwrap_err();
            let text = format!("{error} {error:?}");
            assert!(!text.contains("secret-password"), "{text}");
            assert!(!text.contains("eyJ"), "{text}");
        }
    }

    #[test]
    fn key_errors() {
        assert_eq!(
            JwtVerifier::from_secret(b"").unwrap_err(),
            JwtKeyError::EmptySecret
        );
        assert_eq!(
            JwtVerifier::from_public_key_pem(b"not pem").unwrap_err(),
            JwtKeyError::NotPem
        );
        let private = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let error =
            JwtVerifier::from_public_key_pem(private.serialize_pem().as_bytes()).unwrap_err();
        assert_eq!(error, JwtKeyError::NotAPublicKey("PRIVATE KEY".into()));
        assert!(!format!("{error}").contains(&private.serialize_pem()[30..60]));
        for unsupported in [
            &include_bytes!("testdata/secp256k1.pub.pem")[..],
            &include_bytes!("testdata/ed448.pub.pem")[..],
        ] {
            assert!(matches!(
                JwtVerifier::from_public_key_pem(unsupported),
                Err(JwtKeyError::Unsupported(_))
            ));
        }
        let garbage = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(matches!(
            JwtVerifier::from_public_key_pem(garbage),
            Err(JwtKeyError::Malformed(_))
        ));
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let verifier = JwtVerifier::from_secret(b"very-secret-bytes").unwrap();
        let debug = format!("{verifier:?}");
        assert!(debug.contains("HS256"), "{debug}");
        assert!(!debug.contains("very-secret"), "{debug}");
        assert!(!debug.contains("118, 101, 114, 121"), "{debug}");
    }

    #[test]
    fn bit_length_counts_significant_bits() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[0, 1]), 1);
        assert_eq!(bit_length(&[0, 0x80, 0]), 16);
        assert_eq!(bit_length(&[0x7f; 256]), 2047);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let verifier = secret_verifier();
            prop_assert!(verifier.verify(&bytes, at(1)).is_err());
        }

        #[test]
        fn random_jws_shapes_never_panic(text in "[A-Za-z0-9_.=-]{0,400}") {
            let verifier = secret_verifier();
            prop_assert!(verifier.verify(text.as_bytes(), at(1)).is_err());
        }

        #[test]
        fn signed_random_claims_never_panic(claims in "[ -~]{0,200}") {
            // Anything the issuer may have signed: the verifier refuses or accepts, never panics.
            let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#);
            let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(&claims));
            let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(SECRET).unwrap();
            mac.update(input.as_bytes());
            let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
            let _ = secret_verifier().verify(token.as_bytes(), at(1));
        }
    }
}
