//! What the authentication tests share: JSON Web Tokens made here (base64url and HMAC written
//! against RFC 7515 / RFC 2104 with the `hmac` and `sha2` crates, nothing of the broker's), and
//! CONNECTs whose CONNACK is returned whatever its code.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;

use crate::packets::{Connect, Packet};
use crate::packets5;
use crate::raw::{RawClient, RawClient5, RecvError};
use crate::{Broker, TIMEOUT};

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn encode(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let symbols = chunk.len() + 1;
        for i in 0..4 {
            if i < symbols {
                out.push(alphabet[((n >> (18 - 6 * i)) & 0x3f) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

/// Base64url without padding (RFC 7515 §2), as JWS uses.
pub fn base64url(bytes: &[u8]) -> String {
    encode(bytes, URL_SAFE, false)
}

/// Standard base64 with padding (RFC 4648 §4), as HTTP Basic credentials use.
pub fn base64(bytes: &[u8]) -> String {
    encode(bytes, STANDARD, true)
}

/// A compact JWS: `header.claims` signed by `sign`, which gets the signing input.
pub fn token(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let signature = sign(input.as_bytes());
    format!("{input}.{}", base64url(&signature))
}

fn mac<M: Mac + KeyInit>(key: &[u8], input: &[u8]) -> Vec<u8> {
    let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(input);
    mac.finalize().into_bytes().to_vec()
}

/// A token signed with HS256, HS384 or HS512 under `secret`.
pub fn hmac_token(alg: &str, secret: &[u8], claims: &Value) -> String {
    let header = serde_json::json!({"alg": alg, "typ": "JWT"});
    token(&header, claims, |input| match alg {
        "HS256" => mac::<Hmac<sha2::Sha256>>(secret, input),
        "HS384" => mac::<Hmac<sha2::Sha384>>(secret, input),
        "HS512" => mac::<Hmac<sha2::Sha512>>(secret, input),
        other => panic!("not an HMAC algorithm: {other}"),
    })
}

/// An HS256 token under `secret`.
pub fn hs256(secret: &[u8], claims: &Value) -> String {
    hmac_token("HS256", secret, claims)
}

/// Seconds since 1970 now, for `exp`, `nbf` and `expire_at`.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// Sends a 3.1.1 `connect` on a new connection and returns the CONNACK's return code with the
/// client; panics when no CONNACK comes within [`TIMEOUT`].
pub async fn connack_v3(addr: SocketAddr, connect: &Connect) -> (RawClient, u8) {
    let mut client = RawClient::connect(addr).await;
    client.send(&connect.encode()).await;
    match client.try_recv(TIMEOUT).await {
        Ok(Packet::ConnAck { code, .. }) => (client, code),
        Ok(other) => panic!("expected CONNACK, got {other:?}"),
        Err(RecvError::Timeout) => panic!("no CONNACK within {TIMEOUT:?}"),
        Err(error) => panic!("no CONNACK: {error:?}"),
    }
}

/// The 3.1.1 CONNACK code for `connect` (the connection is dropped).
pub async fn connack_code_v3(addr: SocketAddr, connect: &Connect) -> u8 {
    connack_v3(addr, connect).await.1
}

/// The MQTT 5 CONNACK reason code for `connect` (the connection is dropped).
pub async fn connack_code_v5(addr: SocketAddr, connect: &packets5::Connect) -> u8 {
    RawClient5::try_connect_v5(addr, connect).await.1.code
}

/// Asserts that a refused 3.1.1 client is closed right after its CONNACK.
pub async fn assert_refused_v3(addr: SocketAddr, connect: &Connect, code: u8, what: &str) {
    let (mut client, got) = connack_v3(addr, connect).await;
    assert_eq!(got, code, "3.1.1 CONNACK for {what}");
    let after = client.expect_closed(TIMEOUT).await;
    assert!(after.is_empty(), "{what}: packets after CONNACK {after:?}");
}

/// Asserts that a refused MQTT 5 client gets `code` and is closed right after its CONNACK.
pub async fn assert_refused_v5(
    addr: SocketAddr,
    connect: &packets5::Connect,
    code: u8,
    what: &str,
) {
    let (mut client, connack) = RawClient5::try_connect_v5(addr, connect).await;
    assert_eq!(connack.code, code, "MQTT 5 CONNACK for {what}: {connack:?}");
    let after = client.expect_closed(TIMEOUT).await;
    assert!(after.is_empty(), "{what}: packets after CONNACK {after:?}");
}

/// How many log lines contain every one of `parts`.
pub fn count_log_lines(broker: &Broker, parts: &[&str]) -> usize {
    broker
        .logs()
        .lines()
        .filter(|line| parts.iter().all(|part| line.contains(part)))
        .count()
}

/// Waits (at most `timeout`) until at least `count` log lines contain every one of `parts`:
/// the `count`-th reload of a file, when earlier ones were logged already.
pub async fn wait_log_count(broker: &Broker, parts: &[&str], count: usize, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if count_log_lines(broker, parts) >= count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {count} log lines with {parts:?} within {timeout:?}; log:\n{}",
            broker.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, standard, url) in [
            ("", "", ""),
            ("f", "Zg==", "Zg"),
            ("fo", "Zm8=", "Zm8"),
            ("foo", "Zm9v", "Zm9v"),
            ("foob", "Zm9vYg==", "Zm9vYg"),
            ("fooba", "Zm9vYmE=", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), standard);
            assert_eq!(base64url(plain.as_bytes()), url);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    /// RFC 7515 appendix A.1's HS256 example: same key, same signing input, same signature.
    #[test]
    fn hs256_matches_rfc_7515_a_1() {
        let key = [
            3u8, 35, 53, 75, 43, 15, 165, 188, 131, 126, 6, 101, 119, 123, 166, 143, 90, 179, 40,
            230, 240, 84, 201, 40, 169, 15, 132, 178, 210, 80, 46, 191, 211, 251, 90, 146, 210, 6,
            71, 239, 150, 138, 180, 195, 119, 98, 61, 34, 61, 46, 33, 114, 5, 46, 79, 8, 192, 205,
            154, 245, 103, 208, 128, 163,
        ];
        let input = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.\
            eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
        assert_eq!(
            base64url(&mac::<Hmac<sha2::Sha256>>(&key, input.as_bytes())),
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        );
    }
}
