//! Authorization rules: which client may publish to which topics and subscribe to which filters.
//!
//! A [`Rules`] is an ordered list of rules and a default: the rules file (`-acl`, default
//! `-acld`), or the rules a client's credentials carry (a JWT's `acl` claim, the HTTP service's
//! answer; see [`Rules::from_client_acl`]). The first rule that applies to the client and matches
//! decides; when none does, the default does.
//!
//! ```text
//! # comment
//! deny  subscribe test/nosubscribe
//! allow publish   devices/%c/#
//! allow all       sensors/# user alice address 10.0.0.0/8
//! allow all       #
//! ```
//!
//! A line is `allow|deny`, an action (`publish`, `subscribe` or `all`; Mosquitto's `write`,
//! `read` and `readwrite` are taken too), a topic filter, then optional qualifiers that must all
//! hold for the rule to apply: `user NAME`, `client ID`, `address IP[/PREFIX]`. `%u` and `%c` in
//! the filter stand for the client's username and client id; a rule whose placeholder the client
//! cannot fill (no username, or a value holding `+`, `#` or `/`, which would widen the filter or
//! reach into another client's levels, or starting with `$`, which would reach `$` topics) does
//! not apply to that client. Filters match as in MQTT,
//! so `#` does not reach topics that start with `$`: `$SYS/#` must be named to be allowed.
//!
//! A PUBLISH is decided by its topic. A SUBSCRIBE is decided by its filter as a whole: the first
//! applicable rule that *covers* the filter (every topic the filter matches, the rule matches)
//! decides; rules that only overlap it do not, but an overlapping `deny` before the deciding
//! `allow` marks the grant [`SubscribeDecision::AllowedChecked`]: messages through it are then
//! checked topic by topic, so `deny subscribe secret/#` followed by `allow subscribe #` lets a
//! client subscribe to `#` and never read `secret/x`. Filters only overlapped by an `allow` fall
//! to the default (`allow subscribe devices/%c/#` with `-acld deny` refuses `devices/#`).
//!
//! A topic is matched against the rules through an [`index`] of their filters, so its cost
//! does not grow with the number of rules.

mod index;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

use super::ClientAcl;
use crate::topic;
use index::{Filed, RuleIndex};

/// What a rule says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Allow,
    Deny,
}

impl FromStr for Permission {
    type Err = String;

    fn from_str(text: &str) -> Result<Permission, String> {
        match text {
            "allow" => Ok(Permission::Allow),
            "deny" => Ok(Permission::Deny),
            other => Err(format!("expected allow or deny, found {other:?}")),
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Permission::Allow => "allow",
            Permission::Deny => "deny",
        })
    }
}

/// How the rules judged a SUBSCRIBE filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeDecision {
    Denied,
    /// Every topic the filter matches may be read.
    Allowed,
    /// Allowed, but some topics it matches may not be read: each message is checked.
    AllowedChecked,
}

/// Who is asking: what the rules' qualifiers and placeholders are matched against.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub username: Option<&'a str>,
    pub client_id: &'a str,
    /// `None` when the address proves nothing (a UDP source, which anyone can forge): then
    /// no `address` rule applies.
    pub address: Option<IpAddr>,
}

/// A rules file that cannot be used, with the line at fault.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct RulesError {
    pub line: usize,
    pub reason: String,
}

/// An ordered list of rules and the decision when none matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<Rule>,
    default: Permission,
    /// The rules' filters as a tree, for topics (see [`index`]).
    index: RuleIndex,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    permission: Permission,
    publish: bool,
    subscribe: bool,
    pattern: Pattern,
    user: Option<String>,
    client: Option<String>,
    address: Option<Cidr>,
}

impl Rules {
    /// No rules: the default decides everything.
    pub fn empty(default: Permission) -> Rules {
        Rules::new(Vec::new(), default)
    }

    fn new(rules: Vec<Rule>, default: Permission) -> Rules {
        let index = RuleIndex::new(rules.iter().map(|rule| Filed {
            pattern: &rule.pattern,
            user: rule.user.as_deref(),
            client: rule.client.as_deref(),
        }));
        Rules {
            rules,
            default,
            index,
        }
    }

    /// Parses a rules file.
    pub fn parse(text: &str, default: Permission) -> Result<Rules, RulesError> {
        let mut rules = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let rule = parse_rule(line).map_err(|reason| RulesError {
                line: index + 1,
                reason,
            })?;
            rules.push(rule);
        }
        Ok(Rules::new(rules, default))
    }

    /// The rules a client's credentials carry: what they list is allowed, anything else denied.
    /// The filters were validated with the credentials ([`ClientAcl::validate`]); an invalid one
    /// allows nothing.
    pub fn from_client_acl(acl: &ClientAcl) -> Rules {
        let lists = [
            (&acl.all, true, true),
            (&acl.publish, true, false),
            (&acl.subscribe, false, true),
        ];
        let mut rules = Vec::new();
        for (filters, publish, subscribe) in lists {
            for filter in filters {
                if let Some(pattern) = Pattern::parse(filter) {
                    rules.push(Rule {
                        permission: Permission::Allow,
                        publish,
                        subscribe,
                        pattern,
                        user: None,
                        client: None,
                        address: None,
                    });
                }
            }
        }
        Rules::new(rules, Permission::Deny)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether these rules allow everything to everyone (no rules, default allow): access
    /// control then has nothing to check.
    pub fn allows_everything(&self) -> bool {
        self.rules.is_empty() && self.default == Permission::Allow
    }

    /// Whether `client` may publish to `topic` (a valid topic name).
    pub fn may_publish(&self, client: &Client<'_>, topic: &[u8]) -> bool {
        self.decide_topic(client, topic, |rule| rule.publish)
    }

    /// Whether `client` may receive a message published to `topic` (a valid topic name).
    pub fn may_read(&self, client: &Client<'_>, topic: &[u8]) -> bool {
        self.decide_topic(client, topic, |rule| rule.subscribe)
    }

    fn decide_topic(&self, client: &Client<'_>, topic: &[u8], action: fn(&Rule) -> bool) -> bool {
        for number in self
            .index
            .candidates(topic, client.username, client.client_id)
        {
            let Some(rule) = self.rules.get(number as usize) else {
                continue;
            };
            if !action(rule) || !rule.applies_to(client) {
                continue;
            }
            // `None`: the client cannot fill the rule's placeholders, so it does not apply.
            if rule.pattern.matches_topic(topic, client) == Some(true) {
                return rule.permission == Permission::Allow;
            }
        }
        self.default == Permission::Allow
    }

    /// How the rules judge a subscription to `filter` (a valid, non-shared filter).
    pub fn decide_subscribe(&self, client: &Client<'_>, filter: &str) -> SubscribeDecision {
        let filter: Vec<&[u8]> = topic::levels(filter.as_bytes()).collect();
        let mut denied_in_part = false;
        for rule in &self.rules {
            if !rule.subscribe || !rule.applies_to(client) {
                continue;
            }
            let Some(levels) = rule.pattern.substitute(client) else {
                continue;
            };
            let pattern: Vec<&[u8]> = levels.iter().map(Vec::as_slice).collect();
            if covers(&pattern, &filter) {
                return match rule.permission {
                    Permission::Deny => SubscribeDecision::Denied,
                    Permission::Allow if denied_in_part => SubscribeDecision::AllowedChecked,
                    Permission::Allow => SubscribeDecision::Allowed,
                };
            }
            if rule.permission == Permission::Deny && intersects(&pattern, &filter) {
                denied_in_part = true;
            }
        }
        match self.default {
            Permission::Deny => SubscribeDecision::Denied,
            Permission::Allow if denied_in_part => SubscribeDecision::AllowedChecked,
            Permission::Allow => SubscribeDecision::Allowed,
        }
    }
}

impl Rule {
    fn applies_to(&self, client: &Client<'_>) -> bool {
        self.user
            .as_deref()
            .is_none_or(|user| client.username == Some(user))
            && self
                .client
                .as_deref()
                .is_none_or(|id| client.client_id == id)
            && self
                .address
                .is_none_or(|cidr| client.address.is_some_and(|address| cidr.contains(address)))
    }
}

fn parse_rule(line: &str) -> Result<Rule, String> {
    let mut words = line.split_whitespace();
    let permission: Permission = words.next().unwrap_or_default().parse()?;
    let (publish, subscribe) = match words.next() {
        Some("publish" | "pub" | "write") => (true, false),
        Some("subscribe" | "sub" | "read") => (false, true),
        Some("all" | "readwrite") => (true, true),
        Some(other) => {
            return Err(format!(
                "expected publish, subscribe or all, found {other:?}"
            ))
        }
        None => return Err("expected publish, subscribe or all after the permission".into()),
    };
    let filter = words
        .next()
        .ok_or("expected a topic filter after the action")?;
    let pattern =
        Pattern::parse(filter).ok_or_else(|| format!("{filter:?} is not a valid topic filter"))?;
    let mut rule = Rule {
        permission,
        publish,
        subscribe,
        pattern,
        user: None,
        client: None,
        address: None,
    };
    while let Some(qualifier) = words.next() {
        let value = words
            .next()
            .ok_or_else(|| format!("{qualifier:?} needs a value"))?;
        let slot_taken = match qualifier {
            "user" => rule.user.replace(value.to_string()).is_some(),
            "client" => rule.client.replace(value.to_string()).is_some(),
            "address" => rule.address.replace(value.parse()?).is_some(),
            other => {
                return Err(format!(
                    "unknown qualifier {other:?} (expected user, client or address)"
                ))
            }
        };
        if slot_taken {
            return Err(format!("{qualifier:?} given twice"));
        }
    }
    Ok(rule)
}

/// A topic filter whose levels may hold `%u` and `%c`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    levels: Vec<PatternLevel>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternLevel {
    Exact(Box<[u8]>),
    /// A level with placeholders: literal text and [`Placeholder`]s, in order.
    Template(Box<[Piece]>),
    SingleLevel,
    MultiLevel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(Box<[u8]>),
    Username,
    ClientId,
}

impl Pattern {
    fn parse(filter: &str) -> Option<Pattern> {
        if !topic::is_valid_filter(filter) {
            return None;
        }
        let levels = topic::levels(filter.as_bytes())
            .map(|level| match level {
                b"+" => PatternLevel::SingleLevel,
                b"#" => PatternLevel::MultiLevel,
                _ => match template(level) {
                    Some(pieces) => PatternLevel::Template(pieces),
                    None => PatternLevel::Exact(level.into()),
                },
            })
            .collect();
        Some(Pattern { levels })
    }

    /// Whether the pattern matches `topic` for `client`; `None` when the client cannot fill its
    /// placeholders (the rule does not apply).
    fn matches_topic(&self, topic: &[u8], client: &Client<'_>) -> Option<bool> {
        let mut topic_levels = topic::levels(topic);
        let dollar = topic.first() == Some(&b'$');
        for (index, level) in self.levels.iter().enumerate() {
            let is_wildcard = matches!(level, PatternLevel::SingleLevel | PatternLevel::MultiLevel);
            if index == 0 && dollar && is_wildcard {
                return Some(false);
            }
            let next = topic_levels.next();
            match (level, next) {
                (PatternLevel::MultiLevel, _) => return Some(true),
                (PatternLevel::SingleLevel, Some(_)) => {}
                (PatternLevel::Exact(expected), Some(actual)) if **expected == *actual => {}
                (PatternLevel::Template(pieces), Some(actual)) => {
                    if !fill_matches(pieces, actual, client)? {
                        return Some(false);
                    }
                }
                _ => return Some(false),
            }
        }
        Some(topic_levels.next().is_none())
    }

    /// The pattern's levels with `client`'s values in place of the placeholders; `None` when it
    /// cannot fill them.
    fn substitute(&self, client: &Client<'_>) -> Option<Vec<Vec<u8>>> {
        self.levels
            .iter()
            .map(|level| match level {
                PatternLevel::Exact(text) => Some(text.to_vec()),
                PatternLevel::SingleLevel => Some(b"+".to_vec()),
                PatternLevel::MultiLevel => Some(b"#".to_vec()),
                PatternLevel::Template(pieces) => {
                    let mut out = Vec::new();
                    for piece in pieces.iter() {
                        out.extend_from_slice(piece_value(piece, client)?);
                    }
                    Some(out)
                }
            })
            .collect()
    }
}

/// The pieces of a level holding `%u` or `%c`; `None` when it holds neither.
fn template(level: &[u8]) -> Option<Box<[Piece]>> {
    let mut pieces = Vec::new();
    let mut text = Vec::new();
    let mut rest = level;
    let mut any = false;
    while let Some((&byte, after)) = rest.split_first() {
        let placeholder = match (byte, after.first()) {
            (b'%', Some(b'u')) => Some(Piece::Username),
            (b'%', Some(b'c')) => Some(Piece::ClientId),
            _ => None,
        };
        match placeholder {
            Some(piece) => {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text).into()));
                }
                pieces.push(piece);
                any = true;
                rest = &after[1..];
            }
            None => {
                text.push(byte);
                rest = after;
            }
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text.into()));
    }
    any.then(|| pieces.into())
}

/// A placeholder's value for `client`; `None` when there is none that can stand in a filter.
fn piece_value<'a>(piece: &'a Piece, client: &Client<'a>) -> Option<&'a [u8]> {
    let value = match piece {
        Piece::Text(text) => return Some(text),
        Piece::Username => client.username?,
        Piece::ClientId => client.client_id,
    };
    // A leading `$` would let `%c/#` reach `$SYS/#` for a client named `$SYS`.
    let unsafe_in_filter =
        value.is_empty() || value.contains(['+', '#', '/']) || value.starts_with('$');
    (!unsafe_in_filter).then_some(value.as_bytes())
}

/// Whether a level made of `pieces` equals `level` for `client`, without building it; `None`
/// when the client cannot fill a placeholder.
fn fill_matches(pieces: &[Piece], level: &[u8], client: &Client<'_>) -> Option<bool> {
    let mut rest = level;
    for piece in pieces {
        match rest.strip_prefix(piece_value(piece, client)?) {
            Some(after) => rest = after,
            None => return Some(false),
        }
    }
    Some(rest.is_empty())
}

/// Whether every topic that `filter` matches, `pattern` matches too (both valid filters, split
/// into levels, placeholders filled).
fn covers(pattern: &[&[u8]], filter: &[&[u8]]) -> bool {
    // A wildcard first level does not match `$` topics; a filter whose first level is a
    // wildcard matches none either, so only a literal `$` level needs care.
    let dollar = filter
        .first()
        .is_some_and(|level| level.first() == Some(&b'$'));
    for (index, &level) in pattern.iter().enumerate() {
        let wanted = filter.get(index).copied();
        if index == 0 && dollar && matches!(level, b"+" | b"#") {
            return false;
        }
        match (level, wanted) {
            // `a/#` matches `a` itself, so it covers `a` as well as what is below.
            (b"#", _) => return true,
            // The filter's `#` matches any depth below: only `#` covers that.
            (_, Some(b"#")) => return false,
            (b"+", Some(_)) => {}
            (exact, Some(wanted)) if wanted != b"+" && exact == wanted => {}
            _ => return false,
        }
    }
    pattern.len() == filter.len()
}

/// Whether some topic matches both filters (valid, split into levels, placeholders filled).
fn intersects(a: &[&[u8]], b: &[&[u8]]) -> bool {
    let literal_dollar = |levels: &[&[u8]]| {
        levels
            .first()
            .is_some_and(|level| level.first() == Some(&b'$') && !matches!(*level, b"+" | b"#"))
    };
    let wild_first = |levels: &[&[u8]]| levels.first().is_some_and(|l| matches!(*l, b"+" | b"#"));
    if (literal_dollar(a) && wild_first(b)) || (literal_dollar(b) && wild_first(a)) {
        return false;
    }
    let mut index = 0;
    loop {
        match (a.get(index).copied(), b.get(index).copied()) {
            (Some(b"#"), _) | (_, Some(b"#")) => return true,
            (None, None) => return true,
            (Some(x), Some(y)) if x == b"+" || y == b"+" || x == y => index += 1,
            _ => return false,
        }
    }
}

/// An address range: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `address` is in the range; an IPv4-mapped IPv6 address counts as its IPv4 one.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match (self.network, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                prefix_equal(&network.octets(), &address.octets(), self.prefix)
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                prefix_equal(&network.octets(), &address.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_equal(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let (whole, bits) = (usize::from(prefix / 8), prefix % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    if bits == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - bits);
    a[whole] & mask == b[whole] & mask
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let invalid = || format!("{text:?} is not an IP address or range (e.g. 10.0.0.0/8)");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| invalid())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(invalid)?,
            None => max,
        };
        Ok(Cidr { network, prefix })
    }
}

#[cfg(test)]
mod tests;
