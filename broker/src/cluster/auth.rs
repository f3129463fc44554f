//! Authentication of cluster datagrams: every datagram on the gossip and sync ports ends with an
//! HMAC-SHA256 tag over everything before it.
//!
//! The two ports use different keys, both derived from the cluster key (`-csk`) with a label, so
//! a datagram captured on one port can never be accepted on the other, and the cluster key itself
//! never keys a MAC directly (it may be short or reused elsewhere).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the tag that ends every datagram.
pub const TAG_LEN: usize = 32;

const GOSSIP_LABEL: &[u8] = b"coolpy7 cluster gossip v1";
const SYNC_LABEL: &[u8] = b"coolpy7 cluster sync v1";

/// A key for one of the two ports. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct DatagramKey {
    mac: HmacSha256,
}

impl std::fmt::Debug for DatagramKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatagramKey(..)")
    }
}

impl DatagramKey {
    /// The key for gossip (membership) datagrams.
    pub fn gossip(cluster_key: &[u8]) -> DatagramKey {
        DatagramKey::derive(cluster_key, GOSSIP_LABEL)
    }

    /// The key for sync (forwarded PUBLISH) datagrams.
    pub fn sync(cluster_key: &[u8]) -> DatagramKey {
        DatagramKey::derive(cluster_key, SYNC_LABEL)
    }

    fn derive(cluster_key: &[u8], label: &[u8]) -> DatagramKey {
        let derived = new_mac(cluster_key)
            .chain_update(label)
            .finalize()
            .into_bytes();
        DatagramKey {
            mac: new_mac(&derived),
        }
    }

    /// Appends the tag of `datagram` (everything written so far) to it.
    pub fn seal(&self, datagram: &mut Vec<u8>) {
        let tag = self
            .mac
            .clone()
            .chain_update(&datagram[..])
            .finalize()
            .into_bytes();
        datagram.extend_from_slice(&tag);
    }

    /// The authenticated body of `datagram` (without its tag), or `None` when the tag is missing
    /// or wrong. The comparison takes the same time wherever the tag differs.
    pub fn open<'a>(&self, datagram: &'a [u8]) -> Option<&'a [u8]> {
        let split = datagram.len().checked_sub(TAG_LEN)?;
        let (body, tag) = datagram.split_at(split);
        self.mac
            .clone()
            .chain_update(body)
            .verify_slice(tag)
            .ok()
            .map(|()| body)
    }
}

fn new_mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (long ones are hashed first), so this cannot fail.
    match <HmacSha256 as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_datagram_opens_with_the_same_key_only() {
        let key = DatagramKey::sync(b"12345678");
        let mut datagram = b"hello".to_vec();
        key.seal(&mut datagram);
        assert_eq!(datagram.len(), 5 + TAG_LEN);
        assert_eq!(key.open(&datagram), Some(&b"hello"[..]));
        assert_eq!(DatagramKey::sync(b"12345679").open(&datagram), None);
        // The ports' keys differ even for the same cluster key.
        assert_eq!(DatagramKey::gossip(b"12345678").open(&datagram), None);
    }

    #[test]
    fn any_changed_bit_or_missing_byte_is_refused() {
        let key = DatagramKey::gossip(b"k");
        let mut datagram = vec![1, 2, 3, 4];
        key.seal(&mut datagram);
        for i in 0..datagram.len() {
            let mut bad = datagram.clone();
            bad[i] ^= 0x01;
            assert_eq!(key.open(&bad), None, "flipped byte {i}");
        }
        assert_eq!(key.open(&datagram[..datagram.len() - 1]), None);
        assert_eq!(key.open(&datagram[..TAG_LEN - 1]), None);
        assert_eq!(key.open(&[]), None);
    }

    #[test]
    fn the_key_is_not_printed() {
        assert_eq!(
            format!("{:?}", DatagramKey::sync(b"secret")),
            "DatagramKey(..)"
        );
    }
}
