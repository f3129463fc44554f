use std::collections::VecDeque;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn name(i: usize) -> Bytes {
    Bytes::from(format!("n{i}"))
}

fn wants() -> Request {
    Request {
        want_session: true,
        owner: None,
        adopt_only: false,
    }
}

#[derive(Debug, Clone)]
enum Message {
    Claim(ClaimId),
    Answer(ClaimId, Answer),
}

/// A few nodes exchanging claims for one client id over FIFO links, each with a store that
/// holds the session (a token) or not.
struct Cluster {
    claims: Vec<Claims>,
    store: Vec<Option<Bytes>>,
    /// How each node's own claims came out.
    verdicts: Vec<Vec<(ClaimId, Verdict)>>,
    /// Whether the node's client is connected: from its claim's win until a later claim takes
    /// the client id over.
    connected: Vec<bool>,
    /// links[from][to]
    links: Vec<Vec<VecDeque<Message>>>,
    deadline: Instant,
}

const CLIENT: &str = "c";

impl Cluster {
    fn new(nodes: usize, holder: Option<usize>) -> Cluster {
        let mut store = vec![None; nodes];
        if let Some(holder) = holder {
            store[holder] = Some(Bytes::from_static(b"session"));
        }
        Cluster {
            claims: (0..nodes).map(|i| Claims::new(name(i))).collect(),
            store,
            verdicts: vec![Vec::new(); nodes],
            connected: vec![false; nodes],
            links: vec![vec![VecDeque::new(); nodes]; nodes],
            deadline: Instant::now() + Duration::from_secs(3600),
        }
    }

    fn send(&mut self, from: usize, to: usize, message: Message) {
        self.links[from][to].push_back(message);
    }

    fn index_of(node: &[u8]) -> usize {
        std::str::from_utf8(&node[1..])
            .ok()
            .and_then(|n| n.parse().ok())
            .expect("node name")
    }

    fn claim(&mut self, node: usize, now_ms: u64) -> ClaimId {
        let peers: Vec<Bytes> = (0..self.claims.len())
            .filter(|&i| i != node)
            .map(name)
            .collect();
        let id = self.claims[node]
            .start(CLIENT, peers.clone(), now_ms, self.deadline)
            .expect("no claim in flight");
        for peer in 0..self.claims.len() {
            if peer != node {
                self.send(node, peer, Message::Claim(id.clone()));
            }
        }
        id
    }

    /// The holder's side of a claim: its session goes to the claimant.
    fn take_over(&mut self, node: usize, id: &ClaimId) {
        self.connected[node] = false;
        let answer = match self.store[node].take() {
            Some(session) => Answer::Session(session),
            None => Answer::Nothing,
        };
        self.send(
            node,
            Self::index_of(&id.node),
            Message::Answer(id.clone(), answer),
        );
    }

    fn adopt(&mut self, node: usize, session: Option<Bytes>) {
        if let Some(session) = session {
            assert!(
                self.store[node].is_none(),
                "node {node} got a second copy of the session"
            );
            self.store[node] = Some(session);
        }
    }

    fn done(&mut self, node: usize, done: Done) {
        self.verdicts[node].push((done.id.clone(), done.verdict));
        self.connected[node] = done.verdict == Verdict::Won;
        self.adopt(node, done.session.map(|(_, session)| session));
        assert!(done.extra.is_empty(), "one session only");
        if let Some((later, _)) = done.yield_to {
            self.take_over(node, &later);
        }
    }

    /// Delivers the next message on link `from` -> `to`, if any.
    fn deliver(&mut self, from: usize, to: usize) -> bool {
        let Some(message) = self.links[from][to].pop_front() else {
            return false;
        };
        match message {
            Message::Claim(id) => match self.claims[to].on_claim(CLIENT, &id, &wants()) {
                OnClaim::TakeOver => self.take_over(to, &id),
                OnClaim::Refuse => self.send(to, from, Message::Answer(id, Answer::Refused)),
                OnClaim::Deferred { refuse } => {
                    if let Some(earlier) = refuse {
                        let node = Self::index_of(&earlier.node);
                        self.send(to, node, Message::Answer(earlier, Answer::Refused));
                    }
                }
            },
            Message::Answer(id, answer) => {
                match self.claims[to].on_answer(CLIENT, &id, &name(from), answer) {
                    OnAnswer::Waiting => {}
                    OnAnswer::Done(done) => self.done(to, *done),
                    OnAnswer::Stray(session) => self.adopt(to, session),
                }
            }
        }
        true
    }

    fn idle(&self) -> bool {
        self.links.iter().flatten().all(VecDeque::is_empty)
    }

    /// Delivers everything, picking the link by `choices` (then in order).
    fn run(&mut self, choices: &[usize]) {
        let n = self.claims.len();
        let mut choices = choices.iter();
        for _ in 0..10_000 {
            if self.idle() {
                return;
            }
            let busy: Vec<(usize, usize)> = (0..n)
                .flat_map(|from| (0..n).map(move |to| (from, to)))
                .filter(|&(from, to)| !self.links[from][to].is_empty())
                .collect();
            let pick = choices.next().copied().unwrap_or(0) % busy.len();
            let (from, to) = busy[pick];
            self.deliver(from, to);
        }
        panic!("messages still going round after 10,000 deliveries");
    }

    fn holders(&self) -> Vec<usize> {
        (0..self.store.len())
            .filter(|&i| self.store[i].is_some())
            .collect()
    }
}

#[test]
fn the_session_moves_to_the_node_that_claims_it() {
    let mut cluster = Cluster::new(3, Some(0));
    let id = cluster.claim(1, 1_000);
    cluster.run(&[]);
    assert_eq!(cluster.verdicts[1], vec![(id, Verdict::Won)]);
    assert_eq!(cluster.holders(), vec![1]);
    assert!(cluster.claims.iter().all(Claims::is_empty));
}

#[test]
fn a_claim_nobody_is_asked_for_is_complete_at_once() {
    let mut claims = Claims::new(name(0));
    let deadline = Instant::now() + Duration::from_secs(1);
    claims
        .start(CLIENT, Vec::new(), 5, deadline)
        .expect("start");
    assert_eq!(claims.start(CLIENT, Vec::new(), 5, deadline), Err(Busy));
    let done = claims.complete_if_unasked(CLIENT).expect("done");
    assert_eq!((done.verdict, done.unanswered), (Verdict::Won, 0));
    assert!(claims.is_empty());
}

#[test]
fn of_two_racing_claims_the_later_wins_and_gets_the_session() {
    // Node 0 holds the session; 1 and 2 claim at once (2's is later), and every message to
    // 0 arrives before the claims reach each other.
    let mut cluster = Cluster::new(3, Some(0));
    let early = cluster.claim(1, 1_000);
    let late = cluster.claim(2, 1_000);
    assert!(late > early, "same millisecond: the node name decides");
    while cluster.deliver(1, 0) | cluster.deliver(2, 0) {}
    cluster.run(&[]);
    assert_eq!(cluster.verdicts[1], vec![(early, Verdict::Lost)]);
    assert_eq!(cluster.verdicts[2], vec![(late, Verdict::Won)]);
    assert_eq!(
        cluster.holders(),
        vec![2],
        "the earlier claim passed the session on"
    );
}

#[test]
fn a_peer_that_never_answers_holds_a_claim_until_its_deadline_or_until_it_is_gone() {
    let now = Instant::now();
    let mut claims = Claims::new(name(0));
    let id = claims
        .start(CLIENT, [name(1), name(2)], 7, now + Duration::from_secs(2))
        .expect("start");
    assert!(matches!(
        claims.on_answer(CLIENT, &id, b"n1", Answer::Nothing),
        OnAnswer::Waiting
    ));
    // An answer from a peer that was not asked, or for another claim, is stray.
    assert!(matches!(
        claims.on_answer(
            CLIENT,
            &id,
            b"n9",
            Answer::Session(Bytes::from_static(b"s"))
        ),
        OnAnswer::Stray(Some(_))
    ));
    assert!(claims.expire(now + Duration::from_secs(1)).is_empty());
    assert_eq!(claims.next_deadline(), Some(now + Duration::from_secs(2)));
    let done = claims.expire(now + Duration::from_secs(2));
    assert_eq!(done.len(), 1);
    assert_eq!((done[0].verdict, done[0].unanswered), (Verdict::Won, 1));

    let id = claims
        .start(CLIENT, [name(1)], 8, now + Duration::from_secs(2))
        .expect("start");
    let done = claims.peer_gone(b"n1");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].id, id);
    assert_eq!(done[0].unanswered, 0);
}

#[test]
fn a_foreign_session_refuses_the_claim_and_its_clock_follows_what_it_hears() {
    let now = Instant::now();
    let mut claims = Claims::new(name(0));
    // Hearing of a claim far ahead moves this node's next claim after it.
    let ahead = ClaimId {
        ms: 9_000,
        count: 3,
        node: name(1),
    };
    assert_eq!(
        claims.on_claim("other", &ahead, &wants()),
        OnClaim::TakeOver
    );
    let id = claims
        .start(CLIENT, [name(1)], 10, now + Duration::from_secs(2))
        .expect("start");
    assert!(id > ahead, "{id:?} after {ahead:?}");
    match claims.on_answer(CLIENT, &id, b"n1", Answer::Foreign) {
        OnAnswer::Done(done) => assert_eq!(done.verdict, Verdict::Foreign),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_claim_in_flight_yields_to_the_latest_of_those_after_it() {
    let now = Instant::now();
    let mut claims = Claims::new(name(0));
    let ours = claims
        .start(CLIENT, [name(1)], 100, now + Duration::from_secs(2))
        .expect("start");
    let earlier = ClaimId {
        ms: 50,
        count: 0,
        node: name(2),
    };
    let later = ClaimId {
        ms: 200,
        count: 0,
        node: name(2),
    };
    let latest = ClaimId {
        ms: 300,
        count: 0,
        node: name(3),
    };
    assert_eq!(claims.on_claim(CLIENT, &earlier, &wants()), OnClaim::Refuse);
    assert_eq!(
        claims.on_claim(CLIENT, &later, &wants()),
        OnClaim::Deferred { refuse: None }
    );
    assert_eq!(
        claims.on_claim(CLIENT, &latest, &wants()),
        OnClaim::Deferred {
            refuse: Some(later.clone())
        }
    );
    // One arriving late, earlier than the one yielded to, is refused.
    assert_eq!(claims.on_claim(CLIENT, &later, &wants()), OnClaim::Refuse);
    match claims.on_answer(
        CLIENT,
        &ours,
        b"n1",
        Answer::Session(Bytes::from_static(b"s")),
    ) {
        OnAnswer::Done(done) => {
            assert_eq!(done.verdict, Verdict::Lost);
            assert_eq!(done.yield_to.map(|(id, _)| id), Some(latest));
            assert!(done.session.is_some());
        }
        other => panic!("{other:?}"),
    }
}

proptest! {
    /// Up to five nodes, one of them holding the session (or none), two or three of them
    /// claiming at about the same time, every message delivered in any order each link allows:
    /// the latest claim wins and its client is the one connected in the end (an earlier claim
    /// either loses or wins and is taken over by the later one), and the session is in exactly
    /// one place — the winner's — never copied, never lost.
    #[test]
    fn racing_claims_leave_one_winner_holding_the_one_session(
        nodes in 3usize..6,
        holder in proptest::option::of(0usize..6),
        // Any nodes would do (they are alike); these exist in every cluster drawn.
        claimants in proptest::collection::btree_set(0usize..3, 2..4),
        clocks in proptest::collection::vec(0u64..3, 4),
        early in proptest::collection::vec(0usize..64, 0..20),
        choices in proptest::collection::vec(0usize..64, 0..400),
    ) {
        let holder = holder.filter(|&h| h < nodes);
        let claimants: Vec<usize> = claimants.into_iter().collect();
        let mut cluster = Cluster::new(nodes, holder);
        let mut ids = Vec::new();
        // Claims start between deliveries: some may have heard of others first.
        let mut early = early.iter();
        for (k, &node) in claimants.iter().enumerate() {
            for _ in 0..early.next().copied().unwrap_or(0) % 4 {
                let busy: Vec<(usize, usize)> = (0..nodes)
                    .flat_map(|f| (0..nodes).map(move |t| (f, t)))
                    .filter(|&(f, t)| !cluster.links[f][t].is_empty())
                    .collect();
                if busy.is_empty() {
                    break;
                }
                let (f, t) = busy[early.next().copied().unwrap_or(0) % busy.len()];
                cluster.deliver(f, t);
            }
            ids.push((cluster.claim(node, 1_000 + clocks[k]), node));
        }
        cluster.run(&choices);
        let latest = ids.iter().max().cloned().expect("claims");
        for (id, node) in &ids {
            let verdict = cluster.verdicts[*node]
                .iter()
                .find(|(done, _)| done == id)
                .map(|(_, verdict)| *verdict);
            prop_assert!(verdict.is_some(), "claim {:?} of node {} never completed", id, node);
            if *id == latest.0 {
                prop_assert_eq!(verdict, Some(Verdict::Won));
            }
        }
        let connected: Vec<usize> = (0..nodes).filter(|&i| cluster.connected[i]).collect();
        prop_assert_eq!(connected, vec![latest.1]);
        let holders = cluster.holders();
        if holder.is_some() {
            prop_assert_eq!(holders, vec![latest.1]);
        } else {
            prop_assert!(holders.is_empty());
        }
        prop_assert!(cluster.claims.iter().all(Claims::is_empty));
    }
}

#[test]
fn a_claim_made_only_to_adopt_yields_to_the_latest_of_two_client_claims() {
    let now = Instant::now();
    let mut claims = Claims::new(name(0));
    claims
        .start_as(CLIENT, [name(1)], 100, now + Duration::from_secs(2), true)
        .expect("start");
    let id = |ms| ClaimId {
        ms,
        count: 0,
        node: name(2),
    };
    assert_eq!(
        claims.on_claim(CLIENT, &id(50), &wants()),
        OnClaim::Deferred { refuse: None }
    );
    // An earlier client claim arriving after a later one is refused; the later one stays.
    assert_eq!(claims.on_claim(CLIENT, &id(40), &wants()), OnClaim::Refuse);
    // A later one still replaces it, and the one it replaces is refused.
    assert_eq!(
        claims.on_claim(CLIENT, &id(60), &wants()),
        OnClaim::Deferred {
            refuse: Some(id(50))
        }
    );
}

#[test]
fn a_claim_made_only_to_adopt_gives_way_to_every_client_claim() {
    let now = Instant::now();
    let adopt = Request {
        adopt_only: true,
        ..wants()
    };
    let mut claims = Claims::new(name(0));
    let ours = claims
        .start_as(CLIENT, [name(1)], 100, now + Duration::from_secs(2), true)
        .expect("start");
    // A client's claim, even an earlier one, wins over it.
    let earlier = ClaimId {
        ms: 50,
        count: 0,
        node: name(2),
    };
    assert_eq!(
        claims.on_claim(CLIENT, &earlier, &wants()),
        OnClaim::Deferred { refuse: None }
    );
    // Another adoption never does.
    let later = ClaimId {
        ms: 500,
        count: 0,
        node: name(3),
    };
    assert_eq!(claims.on_claim(CLIENT, &later, &adopt), OnClaim::Refuse);
    match claims.on_answer(
        CLIENT,
        &ours,
        b"n1",
        Answer::Session(Bytes::from_static(b"s")),
    ) {
        OnAnswer::Done(done) => {
            assert_eq!(done.verdict, Verdict::Lost);
            assert_eq!(done.yield_to.map(|(id, _)| id), Some(earlier));
        }
        other => panic!("{other:?}"),
    }
    // A client's claim in flight refuses an adoption, later or not.
    let ours = claims
        .start(CLIENT, [name(1)], 100, now + Duration::from_secs(2))
        .expect("start");
    assert!(ours.ms >= 100);
    assert_eq!(claims.on_claim(CLIENT, &later, &adopt), OnClaim::Refuse);
}
