//! Topic names and topic filters: what is valid, and how a filter names a subscription.
//!
//! The codec has already checked that every string is UTF-8 without U+0000; this module adds the
//! MQTT rules on top (no wildcards in names, `+` and `#` only as whole levels, `#` last) and parses
//! shared-subscription filters (`$share/<group>/<filter>`, and Coolpy7's `$queue/<filter>`, which
//! is a group named `$queue`). Matching itself lives in the router's tree; [`matches`] is the
//! reference definition used where there is no tree (and by the tree's tests).

/// The most levels a topic name or filter may have. The protocol sets no limit, but the router
/// walks topics level by level, and no real topic tree is anywhere near this deep.
pub const MAX_LEVELS: usize = 128;

/// Splits a topic or filter into levels. `"a//b"` has an empty middle level, as in the spec.
pub fn levels(topic: &[u8]) -> impl Iterator<Item = &[u8]> {
    topic.split(|&b| b == b'/')
}

/// A topic name a client may publish to: non-empty, without wildcard characters or U+0000
/// (which the codec refuses already; HTTP and CoAP publish do not go through it), and at most
/// [`MAX_LEVELS`] levels deep.
pub fn is_valid_topic_name(topic: &[u8]) -> bool {
    !topic.is_empty()
        && !topic.iter().any(|&b| b == b'+' || b == b'#' || b == 0)
        && level_count(topic) <= MAX_LEVELS
}

fn level_count(topic: &[u8]) -> usize {
    topic.iter().filter(|&&b| b == b'/').count() + 1
}

/// A syntactically valid (non-shared) topic filter, at most [`MAX_LEVELS`] levels deep.
pub fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || level_count(filter.as_bytes()) > MAX_LEVELS {
        return false;
    }
    let mut levels = levels(filter.as_bytes()).peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        match level {
            b"#" if is_last => {}
            b"+" => {}
            _ if level.iter().any(|&b| b == b'+' || b == b'#') => return false,
            _ => {}
        }
    }
    true
}

/// Whether `name` is a shared subscription group name a SUBSCRIBE could give: not empty, UTF-8
/// without `/`, `+`, `#` or U+0000 (`$queue/` makes one named `$queue`).
pub fn is_valid_group_name(name: &[u8]) -> bool {
    !name.is_empty()
        && std::str::from_utf8(name).is_ok()
        && !name.iter().any(|&b| matches!(b, b'/' | b'+' | b'#' | 0))
}

/// What a SUBSCRIBE filter asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription<'a> {
    /// Every matching message goes to this client.
    Direct { filter: &'a str },
    /// Each matching message goes to one online member of `group`.
    Shared { group: &'a str, filter: &'a str },
}

impl<'a> Subscription<'a> {
    /// Parses a filter as sent in SUBSCRIBE; `None` when it is invalid (SUBACK 0x80).
    pub fn parse(raw: &'a str) -> Option<Subscription<'a>> {
        let subscription = if let Some(rest) = raw.strip_prefix("$share/") {
            let (group, filter) = rest.split_once('/')?;
            if group.is_empty() || group.contains(['+', '#']) {
                return None;
            }
            Subscription::Shared { group, filter }
        } else if let Some(filter) = raw.strip_prefix("$queue/") {
            Subscription::Shared {
                group: "$queue",
                filter,
            }
        } else {
            Subscription::Direct { filter: raw }
        };
        is_valid_filter(subscription.filter()).then_some(subscription)
    }

    /// The filter that topics are matched against.
    pub fn filter(&self) -> &'a str {
        match self {
            Subscription::Direct { filter } | Subscription::Shared { filter, .. } => filter,
        }
    }

    /// Whether the filter holds a wildcard (`+` or `#`), shared or not: what `-wsa false`
    /// refuses. The filter is valid, so any such character is a whole wildcard level.
    pub fn has_wildcard(&self) -> bool {
        self.filter().contains(['+', '#'])
    }

    pub fn group(&self) -> Option<&'a str> {
        match self {
            Subscription::Direct { .. } => None,
            Subscription::Shared { group, .. } => Some(group),
        }
    }
}

/// Whether `filter` (valid) matches `topic` (a valid name). Topics starting with `$` are not
/// matched by a wildcard in the first level (MQTT 3.1.1 §4.7.2).
pub fn matches(filter: &[u8], topic: &[u8]) -> bool {
    if topic.first() == Some(&b'$') && matches!(filter.first(), Some(b'+' | b'#')) {
        return false;
    }
    let mut topic_levels = levels(topic);
    for filter_level in levels(filter) {
        match (filter_level, topic_levels.next()) {
            (b"#", _) => return true,
            (b"+", Some(_)) => {}
            (expected, Some(level)) if expected == level => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(is_valid_topic_name(b"a/b"));
        assert!(is_valid_topic_name(b"/"));
        assert!(is_valid_topic_name(b"$SYS/x"));
        assert!(!is_valid_topic_name(b""));
        assert!(!is_valid_topic_name(b"a/+"));
        assert!(!is_valid_topic_name(b"a/#"));
        assert!(!is_valid_topic_name(b"a#"));
        let deepest = "a/".repeat(MAX_LEVELS - 1) + "a";
        assert!(is_valid_topic_name(deepest.as_bytes()));
        assert!(!is_valid_topic_name(format!("{deepest}/a").as_bytes()));
    }

    #[test]
    fn filters() {
        for ok in [
            "#", "+", "a/#", "a/+/c", "+/+", "/", "a//b", "$SYS/#", "+/#",
        ] {
            assert!(is_valid_filter(ok), "{ok} should be valid");
        }
        for bad in ["", "a/#/b", "a+", "#a", "a/b#", "a/+b", "##", "#/"] {
            assert!(!is_valid_filter(bad), "{bad} should be invalid");
        }
        let deepest = "+/".repeat(MAX_LEVELS - 1) + "#";
        assert!(is_valid_filter(&deepest));
        assert!(!is_valid_filter(&format!("a/{deepest}")));
    }

    #[test]
    fn shared_subscriptions() {
        assert_eq!(
            Subscription::parse("$share/g/a/+"),
            Some(Subscription::Shared {
                group: "g",
                filter: "a/+"
            })
        );
        assert_eq!(
            Subscription::parse("$queue/a/b"),
            Some(Subscription::Shared {
                group: "$queue",
                filter: "a/b"
            })
        );
        assert_eq!(
            Subscription::parse("a/b"),
            Some(Subscription::Direct { filter: "a/b" })
        );
        assert_eq!(Subscription::parse("$share/g"), None);
        assert_eq!(Subscription::parse("$share//a"), None);
        assert_eq!(Subscription::parse("$share/g+/a"), None);
        assert_eq!(Subscription::parse("$share/g/a/#/b"), None);
        assert_eq!(Subscription::parse("$queue/"), None);
    }

    #[test]
    fn wildcards_are_found_in_the_filter_not_the_group() {
        for wild in [
            "#",
            "+",
            "a/+/c",
            "a/#",
            "$share/g/a/+",
            "$share/g/#",
            "$queue/+",
        ] {
            let parsed = Subscription::parse(wild).map(|s| s.has_wildcard());
            assert_eq!(parsed, Some(true), "{wild}");
        }
        for plain in ["a/b", "/", "$share/g/a/b", "$queue/a", "$SYS/x"] {
            let parsed = Subscription::parse(plain).map(|s| s.has_wildcard());
            assert_eq!(parsed, Some(false), "{plain}");
        }
    }

    #[test]
    fn matching() {
        let cases: &[(&str, &str, bool)] = &[
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/+", "a", false),
            ("a/+", "a/", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("#", "a/b", true),
            ("#", "/", true),
            ("+/+", "/", true),
            ("+", "/a", false),
            ("+/b/#", "x/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/+", "$SYS/x", true),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
        ];
        for &(filter, topic, expected) in cases {
            assert_eq!(
                matches(filter.as_bytes(), topic.as_bytes()),
                expected,
                "{filter} vs {topic}"
            );
        }
    }
}
