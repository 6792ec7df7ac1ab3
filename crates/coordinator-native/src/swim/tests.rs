//! The protocol on a simulated network with a fake clock.

use super::*;
use std::collections::{HashSet, VecDeque};

const MS: Duration = Duration::from_millis(1);
const KEY: [u8; 32] = [7; 32];

fn addr(id: NodeId) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 10_000 + id as u16))
}

fn config() -> SwimConfig {
    SwimConfig::from_timing(250 * MS, 750 * MS, 1250 * MS)
}

struct SimNode {
    swim: Swim,
    codec: GossipCodec,
    reports: Vec<(NodeId, u64, MemberState)>,
    /// Every member state this node reported, as (when, id, state).
    history: Vec<(Duration, NodeId, MemberState)>,
}

/// Nodes on a network that delivers datagrams after `latency`, except across cuts.
struct Sim {
    start: Instant,
    now: Instant,
    latency: Duration,
    nodes: BTreeMap<NodeId, SimNode>,
    in_flight: VecDeque<(Instant, SocketAddr, SocketAddr, Vec<u8>)>,
    /// (from, to) pairs whose datagrams and syncs are lost.
    cut: HashSet<(NodeId, NodeId)>,
    largest_datagram: usize,
}

impl Sim {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            now,
            latency: MS,
            nodes: BTreeMap::new(),
            in_flight: VecDeque::new(),
            cut: HashSet::new(),
            largest_datagram: 0,
        }
    }

    fn start_node(&mut self, id: NodeId, run: u64, seeds: &[NodeId]) {
        let seeds = seeds.iter().map(|&s| addr(s)).collect();
        let swim = Swim::new(config(), id, run, addr(id), seeds, self.now, id * 31 + run);
        self.nodes.insert(
            id,
            SimNode {
                swim,
                codec: GossipCodec::new(KEY),
                reports: Vec::new(),
                history: Vec::new(),
            },
        );
    }

    fn kill(&mut self, id: NodeId) {
        self.nodes.remove(&id);
    }

    fn id_at(addr: SocketAddr) -> NodeId {
        (addr.port() - 10_000) as NodeId
    }

    fn blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.cut.contains(&(from, to))
    }

    fn partition(&mut self, a: &[NodeId], b: &[NodeId]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
    }

    /// Runs every node's outputs until nothing is left to do at `now`.
    fn pump(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let outputs: Vec<Output> = match self.nodes.get_mut(&id) {
                Some(node) => node.swim.drain_outputs().collect(),
                None => continue,
            };
            for output in outputs {
                match output {
                    Output::Send { to, packet } => {
                        let node = self.nodes.get_mut(&id).unwrap();
                        let datagram = node.codec.seal(&packet);
                        self.largest_datagram = self.largest_datagram.max(datagram.len());
                        self.in_flight
                            .push_back((self.now + self.latency, addr(id), to, datagram));
                    }
                    Output::Sync { addr: to } => {
                        let peer = Self::id_at(to);
                        if self.blocked(id, peer) || !self.nodes.contains_key(&peer) {
                            continue;
                        }
                        let mine = self.nodes[&id].swim.full_state();
                        let now = self.now;
                        let peer_node = self.nodes.get_mut(&peer).unwrap();
                        peer_node.swim.contact(now, id, mine[0].run, addr(id));
                        peer_node.swim.merge_state(now, mine);
                        let theirs = peer_node.swim.full_state();
                        let node = self.nodes.get_mut(&id).unwrap();
                        node.swim.merge_state(now, theirs);
                    }
                    Output::Report {
                        id: member,
                        run,
                        state,
                    } => {
                        let elapsed = self.now - self.start;
                        let node = self.nodes.get_mut(&id).unwrap();
                        node.reports.push((member, run, state));
                        node.history.push((elapsed, member, state));
                    }
                }
            }
        }
    }

    fn deliver_due(&mut self) {
        while self
            .in_flight
            .front()
            .is_some_and(|(due, ..)| *due <= self.now)
        {
            let (_, from, to, datagram) = self.in_flight.pop_front().unwrap();
            let (from_id, to_id) = (Self::id_at(from), Self::id_at(to));
            if self.blocked(from_id, to_id) {
                continue;
            }
            let now = self.now;
            if let Some(node) = self.nodes.get_mut(&to_id) {
                let packet = node.codec.open(&datagram).expect("a valid datagram");
                node.swim.handle_packet(now, from, packet);
            }
        }
    }

    /// Advances the clock by `duration` in 1 ms steps.
    fn run(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.now += MS;
            self.deliver_due();
            let now = self.now;
            for node in self.nodes.values_mut() {
                if node.swim.next_deadline() <= now {
                    node.swim.tick(now);
                }
            }
            self.pump();
        }
    }

    fn view(&self, of: NodeId, member: NodeId) -> Option<State> {
        self.nodes[&of]
            .swim
            .state_of(member)
            .map(|(_, state)| state)
    }

    fn all_see(&self, member: NodeId, state: State) -> bool {
        self.nodes
            .keys()
            .filter(|&&id| id != member)
            .all(|&id| self.view(id, member) == Some(state))
    }

    fn first_report(&self, of: NodeId, member: NodeId, state: MemberState) -> Option<Duration> {
        self.nodes[&of]
            .history
            .iter()
            .find(|(_, id, s)| *id == member && *s == state)
            .map(|(at, ..)| *at)
    }
}

fn cluster(n: NodeId) -> Sim {
    let mut sim = Sim::new();
    for id in 1..=n {
        sim.start_node(id, 1, &[1]);
    }
    sim.run(2000 * MS);
    sim
}

#[test]
fn nodes_joining_through_one_seed_all_learn_each_other_at_once() {
    let mut sim = Sim::new();
    for id in 1..=5 {
        sim.start_node(id, 1, &[1]);
    }
    sim.run(300 * MS);
    for id in 1..=5 {
        for other in (1..=5).filter(|&o| o != id) {
            assert_eq!(sim.view(id, other), Some(State::Alive), "{id} sees {other}");
        }
    }
}

#[test]
fn a_healthy_cluster_never_suspects_anyone() {
    let mut sim = cluster(8);
    sim.run(60_000 * MS);
    for node in sim.nodes.values() {
        assert!(
            node.history
                .iter()
                .all(|(_, _, s)| *s == MemberState::Alive),
            "{:?}",
            node.history
        );
    }
}

#[test]
fn a_killed_node_is_suspected_after_the_silence_then_declared_dead_by_all() {
    let mut sim = cluster(5);
    let killed_at = sim.now - sim.start;
    sim.kill(5);
    sim.run(3000 * MS);
    for id in 1..=4 {
        let suspected = sim.first_report(id, 5, MemberState::Suspect).unwrap() - killed_at;
        let dead = sim.first_report(id, 5, MemberState::Dead).unwrap() - killed_at;
        assert!(
            suspected >= 750 * MS - 250 * MS,
            "node {id} suspected after {suspected:?}"
        );
        assert!(dead <= 2000 * MS, "node {id} declared death after {dead:?}");
        assert_eq!(sim.view(id, 5), Some(State::Dead));
    }
    for id in 1..=4 {
        for other in (1..=4).filter(|&o| o != id) {
            assert_eq!(sim.view(id, other), Some(State::Alive));
        }
    }
}

#[test]
fn a_node_cut_off_from_one_member_is_reached_indirectly_and_not_suspected() {
    let mut sim = cluster(4);
    sim.cut.insert((1, 4));
    sim.cut.insert((4, 1));
    sim.run(10_000 * MS);
    assert_eq!(sim.view(1, 4), Some(State::Alive));
    assert_eq!(sim.view(4, 1), Some(State::Alive));
    assert!(sim.first_report(1, 4, MemberState::Suspect).is_none());
}

#[test]
fn a_suspected_node_that_is_alive_refutes_and_is_never_declared_dead() {
    let mut sim = cluster(4);
    // Node 4 is unreachable long enough to be suspected, not to be declared dead.
    sim.partition(&[4], &[1, 2, 3]);
    sim.run(800 * MS);
    assert!(
        (1..=3).any(|id| sim.view(id, 4) == Some(State::Suspect)),
        "node 4 suspected"
    );
    sim.cut.clear();
    sim.run(3000 * MS);
    assert!(sim.all_see(4, State::Alive));
    for id in 1..=3 {
        assert!(sim.first_report(id, 4, MemberState::Dead).is_none());
    }
}

#[test]
fn a_healed_partition_merges_by_itself() {
    let mut sim = cluster(6);
    sim.partition(&[1, 2, 3], &[4, 5, 6]);
    sim.run(5000 * MS);
    assert_eq!(sim.view(1, 5), Some(State::Dead));
    assert_eq!(sim.view(5, 1), Some(State::Dead));
    sim.cut.clear();
    sim.run(3 * config().rejoin_interval);
    for id in 1..=6 {
        assert!(sim.all_see(id, State::Alive), "node {id} alive everywhere");
    }
    // The other side's verdicts reach each side with the heal, but a member
    // heard from directly is only suspected by them, and refutes in time.
    for side in [[1, 2, 3], [4, 5, 6]] {
        for a in side {
            for b in side {
                assert!(
                    sim.first_report(a, b, MemberState::Dead).is_none(),
                    "node {a} declared node {b} of its own side dead"
                );
            }
        }
    }
}

#[test]
fn a_restarted_node_replaces_its_old_run() {
    let mut sim = cluster(3);
    sim.kill(3);
    sim.start_node(3, 2, &[1]);
    sim.run(1000 * MS);
    for id in 1..=2 {
        assert_eq!(sim.nodes[&id].swim.state_of(3), Some((2, State::Alive)));
        assert!(sim.nodes[&id].reports.contains(&(3, 2, MemberState::Alive)));
        assert!(sim.first_report(id, 3, MemberState::Dead).is_none());
    }
}

#[test]
fn a_departure_is_known_by_all_at_once() {
    let mut sim = cluster(5);
    sim.nodes.get_mut(&5).unwrap().swim.leave();
    sim.pump();
    sim.run(500 * MS);
    sim.kill(5);
    assert!(sim.all_see(5, State::Left));
    sim.run(5000 * MS);
    assert!(sim.all_see(5, State::Left), "not suspected after leaving");
}

#[test]
fn datagrams_stay_within_the_limit_in_a_large_cluster() {
    let mut sim = Sim::new();
    for id in 1..=120 {
        sim.start_node(id, 1, &[1, 2]);
    }
    sim.run(3000 * MS);
    assert!(
        sim.largest_datagram <= MAX_DATAGRAM,
        "{}",
        sim.largest_datagram
    );
    assert!(
        sim.largest_datagram > MAX_DATAGRAM / 2,
        "packets carry news"
    );
    assert!(sim.all_see(60, State::Alive));
}

#[test]
fn replayed_tampered_and_foreign_datagrams_are_refused() {
    let packet = Packet {
        from: 2,
        run: 9,
        messages: vec![Message::Ping { seq: 1, target: 1 }],
        updates: Vec::new(),
    };
    let mut sender = GossipCodec::new(KEY);
    let mut receiver = GossipCodec::new(KEY);
    let first = sender.seal(&packet);
    let second = sender.seal(&packet);
    assert_eq!(receiver.open(&second), Ok(packet.clone()));
    assert_eq!(receiver.open(&first), Ok(packet.clone()), "late but new");
    assert!(matches!(
        receiver.open(&first),
        Err(DecodeError::Replayed { .. })
    ));
    assert!(matches!(
        receiver.open(&second),
        Err(DecodeError::Replayed { .. })
    ));
    let mut tampered = sender.seal(&packet);
    let last = tampered.len() - 20;
    tampered[last] ^= 1;
    assert_eq!(receiver.open(&tampered), Err(DecodeError::Unauthenticated));
    let foreign = GossipCodec::new([8; 32]).seal(&packet);
    assert_eq!(receiver.open(&foreign), Err(DecodeError::Unauthenticated));
    assert_eq!(receiver.open(b"garbage"), Err(DecodeError::NotGossip));
    let old_run = Packet { run: 8, ..packet };
    let stale = GossipCodec::new(KEY).seal(&old_run);
    assert!(matches!(
        receiver.open(&stale),
        Err(DecodeError::Replayed { .. })
    ));
}

#[test]
fn full_states_round_trip() {
    let updates = vec![
        Update {
            id: 1,
            run: 2,
            version: 3,
            state: State::Suspect,
            addr: addr(1),
        },
        Update {
            id: u64::MAX,
            run: 5,
            version: 0,
            state: State::Left,
            addr: "[::1]:7911".parse().unwrap(),
        },
    ];
    assert_eq!(decode_state(&encode_state(&updates)), Ok(updates));
    assert!(decode_state(&[0, 1, 2]).is_err());
}
