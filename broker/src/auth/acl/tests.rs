use super::*;
use proptest::prelude::*;
use std::net::Ipv4Addr;

fn client<'a>(username: Option<&'a str>, client_id: &'a str) -> Client<'a> {
    Client {
        username,
        client_id,
        address: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
    }
}

fn rules(text: &str, default: Permission) -> Rules {
    Rules::parse(text, default).expect("valid rules in test")
}

#[test]
fn lines_read_as_they_say() {
    let rules = rules(
        "# a comment\n\
         deny subscribe test/nosubscribe\n\
         \n\
         allow publish devices/%c/#\n\
         allow all #\n",
        Permission::Deny,
    );
    assert_eq!(rules.len(), 3);
    let c = client(Some("u"), "c1");
    assert_eq!(
        rules.decide_subscribe(&c, "test/nosubscribe"),
        SubscribeDecision::Denied
    );
    assert!(rules.may_publish(&c, b"test/nosubscribe"));
    assert!(rules.may_publish(&c, b"devices/c1/temp"));
    assert_eq!(
        rules.decide_subscribe(&c, "a/b"),
        SubscribeDecision::Allowed
    );
}

#[test]
fn the_first_matching_rule_wins_and_the_default_decides_the_rest() {
    let rules = rules(
        "allow publish a/b\ndeny publish a/#\nallow publish #",
        Permission::Deny,
    );
    let c = client(None, "c");
    assert!(rules.may_publish(&c, b"a/b"));
    assert!(!rules.may_publish(&c, b"a/c"));
    assert!(!rules.may_publish(&c, b"a"));
    assert!(rules.may_publish(&c, b"x"));
    // No subscribe rule at all: the default.
    assert_eq!(rules.decide_subscribe(&c, "x"), SubscribeDecision::Denied);
    assert!(!rules.may_read(&c, b"x"));
    let open = super::Rules::parse("deny publish a", Permission::Allow).expect("valid");
    assert!(open.may_read(&c, b"x"));
    assert!(!open.may_publish(&c, b"a"));
}

#[test]
fn placeholders_take_the_clients_values_and_refuse_unsafe_ones() {
    let rules = rules(
        "allow all devices/%c/#\nallow subscribe users/%u/inbox\nallow publish x/pre-%u-%c\n\
         allow all %c/#",
        Permission::Deny,
    );
    // A client named `$SYS` does not get `$SYS/#` from `%c/#`.
    let dollar = client(None, "$SYS");
    assert!(!rules.may_publish(&dollar, b"$SYS/x"));
    assert!(rules.may_publish(&client(None, "c7"), b"c7/x"));
    let alice = client(Some("alice"), "c1");
    assert!(rules.may_publish(&alice, b"devices/c1/t"));
    assert!(!rules.may_publish(&alice, b"devices/c2/t"));
    assert!(rules.may_publish(&alice, b"x/pre-alice-c1"));
    assert!(!rules.may_publish(&alice, b"x/pre-alice-c2"));
    assert!(!rules.may_publish(&alice, b"x/pre-alice-c1x"));
    assert_eq!(
        rules.decide_subscribe(&alice, "users/alice/inbox"),
        SubscribeDecision::Allowed
    );
    assert_eq!(
        rules.decide_subscribe(&alice, "users/bob/inbox"),
        SubscribeDecision::Denied
    );
    // No username: rules with %u do not apply.
    let anonymous = client(None, "c1");
    assert_eq!(
        rules.decide_subscribe(&anonymous, "users/+/inbox"),
        SubscribeDecision::Denied
    );
    // A client id with wildcards or a separator would widen the filter or reach other levels.
    for id in ["+", "#", "c1/x", "a+b", "$SYS"] {
        let sneaky = client(None, id);
        assert_eq!(
            rules.decide_subscribe(&sneaky, "devices/#"),
            SubscribeDecision::Denied,
            "{id}"
        );
        assert!(!rules.may_publish(&sneaky, b"devices/c1/x"), "{id}");
    }
}

#[test]
fn qualifiers_must_all_hold() {
    let rules = rules(
        "allow all secret/# user alice client c1 address 10.0.0.0/8\n\
         allow all ipv6/# address 2001:db8::/32\n\
         allow all one/# address 192.168.1.7",
        Permission::Deny,
    );
    let mut c = client(Some("alice"), "c1");
    assert!(rules.may_publish(&c, b"secret/x"));
    c.client_id = "c2";
    assert!(!rules.may_publish(&c, b"secret/x"));
    c.client_id = "c1";
    c.username = Some("bob");
    assert!(!rules.may_publish(&c, b"secret/x"));
    c.username = Some("alice");
    c.address = Some("11.0.0.1".parse().expect("ip"));
    assert!(!rules.may_publish(&c, b"secret/x"));
    // An IPv4-mapped IPv6 address is its IPv4 address.
    c.address = Some("::ffff:10.9.9.9".parse().expect("ip"));
    assert!(rules.may_publish(&c, b"secret/x"));
    c.address = Some("2001:db8::1".parse().expect("ip"));
    assert!(rules.may_publish(&c, b"ipv6/x"));
    c.address = Some("2001:db9::1".parse().expect("ip"));
    assert!(!rules.may_publish(&c, b"ipv6/x"));
    c.address = Some("192.168.1.7".parse().expect("ip"));
    assert!(rules.may_publish(&c, b"one/x"));
    c.address = Some("192.168.1.8".parse().expect("ip"));
    assert!(!rules.may_publish(&c, b"one/x"));
    // No address (a forgeable UDP source): no address rule applies, allowing or denying.
    c.address = None;
    assert!(!rules.may_publish(&c, b"one/x"));
    let deny = super::Rules::parse(
        "deny all x/# address 10.0.0.0/8\nallow all #",
        Permission::Deny,
    )
    .expect("valid");
    assert!(deny.may_publish(&c, b"x/y"));
}

#[test]
fn a_partly_denied_filter_is_granted_with_checks() {
    let rules = rules(
        "deny subscribe secret/#\nallow subscribe #",
        Permission::Deny,
    );
    let c = client(None, "c");
    assert_eq!(
        rules.decide_subscribe(&c, "#"),
        SubscribeDecision::AllowedChecked
    );
    assert_eq!(
        rules.decide_subscribe(&c, "+/x"),
        SubscribeDecision::AllowedChecked
    );
    assert_eq!(
        rules.decide_subscribe(&c, "secret/x"),
        SubscribeDecision::Denied
    );
    assert_eq!(
        rules.decide_subscribe(&c, "public/#"),
        SubscribeDecision::Allowed
    );
    assert!(!rules.may_read(&c, b"secret/x"));
    assert!(rules.may_read(&c, b"public/x"));
}

#[test]
fn a_filter_only_overlapped_by_an_allow_falls_to_the_default() {
    let rules = rules("allow subscribe devices/%c/#", Permission::Deny);
    let c = client(None, "c1");
    assert_eq!(
        rules.decide_subscribe(&c, "devices/#"),
        SubscribeDecision::Denied
    );
    assert_eq!(
        rules.decide_subscribe(&c, "devices/c1/+/x"),
        SubscribeDecision::Allowed
    );
    assert_eq!(
        rules.decide_subscribe(&c, "devices/c1"),
        SubscribeDecision::Allowed
    );
}

#[test]
fn dollar_topics_need_rules_that_name_them() {
    let rules = rules("allow all #", Permission::Deny);
    let c = client(None, "c");
    assert!(!rules.may_publish(&c, b"$SYS/x"));
    assert_eq!(
        rules.decide_subscribe(&c, "$SYS/#"),
        SubscribeDecision::Denied
    );
    let named =
        super::Rules::parse("allow all $SYS/#\nallow all #", Permission::Deny).expect("valid");
    assert!(named.may_publish(&c, b"$SYS/x"));
    assert_eq!(
        named.decide_subscribe(&c, "$SYS/+"),
        SubscribeDecision::Allowed
    );
    // A deny of `#` does not reach `$` topics either.
    let open = super::Rules::parse("deny subscribe #", Permission::Allow).expect("valid");
    assert_eq!(
        open.decide_subscribe(&c, "$SYS/x"),
        SubscribeDecision::Allowed
    );
}

#[test]
fn a_clients_own_rules_allow_what_they_list_and_nothing_else() {
    let acl = ClientAcl {
        publish: vec!["up/%c".into()],
        subscribe: vec!["down/#".into()],
        all: vec!["both/+".into()],
    };
    let rules = Rules::from_client_acl(&acl);
    let c = client(None, "c9");
    assert!(rules.may_publish(&c, b"up/c9"));
    assert!(!rules.may_publish(&c, b"down/x"));
    assert!(rules.may_publish(&c, b"both/x"));
    assert_eq!(
        rules.decide_subscribe(&c, "down/x/#"),
        SubscribeDecision::Allowed
    );
    assert_eq!(
        rules.decide_subscribe(&c, "up/c9"),
        SubscribeDecision::Denied
    );
    assert!(!rules.may_read(&c, b"other"));
}

#[test]
fn bad_lines_are_refused_with_their_number() {
    for (text, line) in [
        ("allow all a\npermit all b", 2),
        ("allow publsh a", 1),
        ("allow all", 1),
        ("\n\nallow all a/#/b", 3),
        ("allow all a user", 1),
        ("allow all a user x user y", 1),
        ("allow all a group g", 1),
        ("allow all a address 10.0.0.0/33", 1),
        ("allow all a address example.com", 1),
    ] {
        let error = Rules::parse(text, Permission::Deny).expect_err(text);
        assert_eq!(error.line, line, "{text}: {error}");
    }
}

#[test]
fn allows_everything_only_without_rules_and_with_default_allow() {
    assert!(Rules::empty(Permission::Allow).allows_everything());
    assert!(!Rules::empty(Permission::Deny).allows_everything());
    assert!(!rules("allow all #", Permission::Allow).allows_everything());
}

// Filters over a small alphabet, so that overlaps are common.
fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("$s".to_string()),
        Just(String::new()),
    ]
}

fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop_oneof![level(), Just("+".to_string())], 0..4),
        any::<bool>(),
    )
        .prop_filter_map("empty filter", |(mut levels, hash)| {
            if hash {
                levels.push("#".to_string());
            }
            let filter = levels.join("/");
            (!filter.is_empty()).then_some(filter)
        })
}

/// Every topic of at most 4 levels over the alphabet.
fn all_topics() -> Vec<String> {
    let alphabet = ["a", "b", "$s", ""];
    let mut out: Vec<String> = alphabet.iter().map(|s| s.to_string()).collect();
    let mut frontier = out.clone();
    for _ in 0..3 {
        let mut next = Vec::new();
        for prefix in &frontier {
            for level in alphabet {
                next.push(format!("{prefix}/{level}"));
            }
        }
        out.extend(next.iter().cloned());
        frontier = next;
    }
    out.retain(|topic| !topic.is_empty());
    out
}

proptest! {
    /// A subscription's decision agrees with the topic-by-topic rules: a granted filter lets
    /// through only readable topics unless it is checked, and a denied filter has some topic it
    /// matches that the rules would not let it cover.
    #[test]
    fn subscribe_decisions_agree_with_topic_decisions(
        lines in prop::collection::vec((any::<bool>(), filter()), 0..5),
        default_allow in any::<bool>(),
        subscribed in filter(),
    ) {
        let text: String = lines
            .iter()
            .map(|(allow, f)| format!("{} subscribe {f}\n", if *allow { "allow" } else { "deny" }))
            .collect();
        let default = if default_allow { Permission::Allow } else { Permission::Deny };
        let rules = Rules::parse(&text, default).expect("generated rules are valid");
        let c = client(None, "c");
        let decision = rules.decide_subscribe(&c, &subscribed);
        let matched: Vec<String> = all_topics()
            .into_iter()
            .filter(|t| topic::matches(subscribed.as_bytes(), t.as_bytes()))
            .collect();
        match decision {
            SubscribeDecision::Allowed => {
                for t in &matched {
                    prop_assert!(rules.may_read(&c, t.as_bytes()), "{} unreadable via {}", t, subscribed);
                }
            }
            SubscribeDecision::AllowedChecked | SubscribeDecision::Denied => {}
        }
        // Reference for the topic check itself.
        for t in all_topics() {
            let reference = lines
                .iter()
                .find(|(_, f)| topic::matches(f.as_bytes(), t.as_bytes()))
                .map_or(default_allow, |(allow, _)| *allow);
            prop_assert_eq!(rules.may_read(&c, t.as_bytes()), reference, "topic {}", t);
        }
    }

    #[test]
    fn covers_and_intersects_agree_with_enumeration(a in filter(), b in filter()) {
        let la: Vec<&[u8]> = topic::levels(a.as_bytes()).collect();
        let lb: Vec<&[u8]> = topic::levels(b.as_bytes()).collect();
        let topics = all_topics();
        let in_a = |t: &String| topic::matches(a.as_bytes(), t.as_bytes());
        let in_b = |t: &String| topic::matches(b.as_bytes(), t.as_bytes());
        // Within the enumerated (bounded) topics: a claimed cover has no counterexample, and
        // a found common topic means the filters intersect.
        if covers(&la, &lb) {
            prop_assert!(topics.iter().filter(|t| in_b(t)).all(in_a), "{} covers {}", a, b);
        }
        if topics.iter().any(|t| in_a(t) && in_b(t)) {
            prop_assert!(intersects(&la, &lb), "{} and {} share a topic", a, b);
        }
        if !intersects(&la, &lb) {
            prop_assert!(!topics.iter().any(|t| in_a(t) && in_b(t)));
        }
    }
}
