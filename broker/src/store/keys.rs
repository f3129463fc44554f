//! Keys and record headers of the data directory. A session's records are keyed by its client
//! id (as a length-prefixed string, so that one id is never a prefix of another's records) and
//! its incarnation (a random number each new session of the client id draws: the records of a
//! session that ended are removed without touching those of the next one), followed by a
//! number: the delivery's place in the session's journal, or a QoS 2 packet id. Numbers are
//! big-endian so that the store's order is their order.

use std::num::NonZeroU32;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The key of a session's own record, and the prefix of all its others:
/// `[length u16][client id][incarnation u64]`.
pub fn session_key(client_id: &str, incarnation: u64) -> Vec<u8> {
    let bytes = client_id.as_bytes();
    // Client ids come from CONNECT, whose strings are at most 65,535 bytes.
    let len = bytes.len().min(usize::from(u16::MAX));
    let mut key = Vec::with_capacity(2 + len + 8 + 4);
    key.extend_from_slice(&(len as u16).to_be_bytes());
    key.extend_from_slice(&bytes[..len]);
    key.extend_from_slice(&incarnation.to_be_bytes());
    key
}

/// The key of a session's delivery `seq`.
pub fn delivery_key(client_id: &str, incarnation: u64, seq: NonZeroU32) -> Vec<u8> {
    let mut key = session_key(client_id, incarnation);
    key.extend_from_slice(&seq.get().to_be_bytes());
    key
}

/// The key of a session's inbound QoS 2 packet id awaiting PUBREL.
pub fn awaiting_key(client_id: &str, incarnation: u64, packet_id: u16) -> Vec<u8> {
    let mut key = session_key(client_id, incarnation);
    key.extend_from_slice(&packet_id.to_be_bytes());
    key
}

/// Splits a session record's key into the client id, the incarnation and the number after
/// them (`N` bytes; none for the session's own record).
pub fn split_key<const N: usize>(key: &[u8]) -> Option<(&str, u64, [u8; N])> {
    let (len, rest) = key.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() != len + 8 + N {
        return None;
    }
    let (id, rest) = rest.split_at(len);
    let (incarnation, number) = rest.split_first_chunk::<8>()?;
    let id = std::str::from_utf8(id).ok()?;
    Some((
        id,
        u64::from_be_bytes(*incarnation),
        number.try_into().ok()?,
    ))
}

/// Milliseconds since the Unix epoch, written before records whose messages may expire: the
/// reader counts the time the record lay on disk against their expiry.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// How long ago `written_ms` was (zero for a time in the future: a clock set back).
pub fn age(written_ms: u64) -> Duration {
    Duration::from_millis(wall_ms().saturating_sub(written_ms))
}

/// Orders a session's journal numbers as they were given out. They count up from 1 and wrap
/// after `u32::MAX` (skipping 0), and a session never holds more than a queue and a window
/// of them, far fewer than half the range: so when the numbers held span more than half of
/// it, the wrap lies in the largest gap between them, and what follows it came first.
pub fn journal_order(seqs: &mut [u32]) {
    seqs.sort_unstable();
    let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else {
        return;
    };
    if last - first <= u32::MAX / 2 {
        return;
    }
    let mut widest = (0, 0);
    for (i, pair) in seqs.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        if gap > widest.1 {
            widest = (i + 1, gap);
        }
    }
    seqs.rotate_left(widest.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_back_into_their_parts() {
        let seq = NonZeroU32::new(0x0102_0304).unwrap();
        let key = delivery_key("sensor/é", 9, seq);
        assert_eq!(
            split_key::<4>(&key),
            Some(("sensor/é", 9, seq.get().to_be_bytes()))
        );
        assert_eq!(
            split_key::<2>(&key),
            None,
            "a delivery key is not a packet id key"
        );
        assert_eq!(split_key::<4>(&key[..key.len() - 1]), None);
        assert_eq!(
            split_key::<2>(&awaiting_key("", 3, 7)),
            Some(("", 3, [0, 7]))
        );
        assert_eq!(split_key::<0>(&session_key("a", 1)), Some(("a", 1, [])));
        // One client id is never a prefix of another's records, nor one incarnation of another.
        assert!(!delivery_key("ab", 1, seq).starts_with(&session_key("a", 1)));
        assert!(!delivery_key("a", 2, seq).starts_with(&session_key("a", 1)));
    }

    #[test]
    fn journal_numbers_are_ordered_across_the_wrap() {
        let mut plain = [5, 3, 4];
        journal_order(&mut plain);
        assert_eq!(plain, [3, 4, 5]);
        let mut wrapped = [2, u32::MAX, 1, u32::MAX - 1];
        journal_order(&mut wrapped);
        assert_eq!(wrapped, [u32::MAX - 1, u32::MAX, 1, 2]);
        let mut empty: [u32; 0] = [];
        journal_order(&mut empty);
    }
}
