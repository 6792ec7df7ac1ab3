//! The protocol on the simulated network (see `sim.rs`): the faults that
//! real networks produce, each asserted on several seeds.

use super::sim::{Sim, addr};
use super::*;

const MS: Duration = Duration::from_millis(1);
const KEY: [u8; 32] = [7; 32];

/// Seeds each fault runs with: 8, or `SWIM_SEEDS` (e.g. 1000 for a long search).
fn seeds() -> std::ops::RangeInclusive<u64> {
    let count = std::env::var("SWIM_SEEDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(8);
    1..=count
}

fn config() -> SwimConfig {
    SwimConfig::from_timing(250 * MS, 750 * MS, 1250 * MS)
}

fn cluster(n: NodeId, seed: u64) -> Sim {
    Sim::cluster(config(), n, seed)
}

/// Reports of `state` about members in their current run, by anyone, after `since`.
fn reports(sim: &Sim, state: MemberState, since: Duration) -> usize {
    sim.false_reports(state, since)
}

#[test]
fn nodes_joining_through_one_seed_all_learn_each_other_at_once() {
    let mut sim = Sim::new(config(), 1);
    for id in 1..=5 {
        sim.start_node(id, 1, &[1]);
    }
    sim.run(300 * MS);
    assert!(sim.all_alive());
}

#[test]
fn a_healthy_cluster_never_suspects_anyone() {
    let mut sim = cluster(8, 1);
    sim.run(60_000 * MS);
    assert_eq!(reports(&sim, MemberState::Suspect, Duration::ZERO), 0);
    assert_eq!(sim.nodes[&1].swim.health(), 0);
}

#[test]
fn a_killed_node_is_declared_dead_by_all_within_two_seconds() {
    for seed in seeds() {
        let mut sim = cluster(5, seed);
        let killed_at = sim.elapsed();
        sim.kill(5);
        sim.run(4000 * MS);
        for id in 1..=4 {
            let suspected = sim.first_report(id, 5, MemberState::Suspect).unwrap() - killed_at;
            let dead = sim.first_report(id, 5, MemberState::Dead).unwrap() - killed_at;
            assert!(
                suspected >= 750 * MS - 250 * MS,
                "seed {seed}: node {id} suspected after {suspected:?}"
            );
            assert!(
                dead < 2000 * MS,
                "seed {seed}: node {id} declared death after {dead:?}"
            );
            assert_eq!(sim.view(id, 5), Some(State::Dead));
        }
        sim.kill(5);
        assert!(sim.all_alive(), "seed {seed}");
        assert_eq!(reports(&sim, MemberState::Suspect, Duration::ZERO), 0);
    }
}

#[test]
fn a_node_cut_off_from_one_member_is_reached_indirectly_and_not_suspected() {
    let mut sim = cluster(4, 1);
    sim.partition(&[1], &[4]);
    sim.run(10_000 * MS);
    assert!(sim.all_alive());
    assert_eq!(reports(&sim, MemberState::Suspect, Duration::ZERO), 0);
}

#[test]
fn no_healthy_node_is_declared_dead_under_twenty_percent_loss() {
    let mut suspicions = 0;
    for seed in seeds() {
        let mut sim = cluster(5, seed);
        let from = sim.elapsed();
        sim.loss = 0.2;
        sim.run(60_000 * MS);
        assert_eq!(
            reports(&sim, MemberState::Dead, from),
            0,
            "seed {seed}: a healthy node declared dead"
        );
        suspicions += reports(&sim, MemberState::Suspect, from);
        sim.heal();
        let settled = sim.run_until(2000 * MS, 10 * MS, Sim::all_alive);
        assert!(
            settled.is_some(),
            "seed {seed}: not all alive 2 s after the heal"
        );
    }
    // Each node probes 4 times a second: 1,200 probes a run. A suspicion is
    // reported by every node, and refuted within milliseconds.
    let runs = seeds().count();
    assert!(
        suspicions <= runs * 5,
        "{suspicions} suspicion reports in {runs} runs"
    );
}

#[test]
fn a_node_whose_datagrams_are_all_lost_is_kept_alive_by_tcp() {
    for seed in seeds() {
        let mut sim = cluster(5, seed);
        let from = sim.elapsed();
        sim.cut_udp_from(5);
        sim.run(30_000 * MS);
        assert_eq!(reports(&sim, MemberState::Dead, from), 0, "seed {seed}");
        assert_eq!(reports(&sim, MemberState::Suspect, from), 0, "seed {seed}");
        assert!(sim.all_alive(), "seed {seed}");
    }
}

#[test]
fn a_suspected_node_that_is_alive_refutes_and_is_never_declared_dead() {
    let mut sim = cluster(4, 1);
    // Node 4 is unreachable long enough to be suspected, not to be declared dead.
    sim.partition(&[4], &[1, 2, 3]);
    sim.run(900 * MS);
    assert!(
        (1..=3).any(|id| sim.view(id, 4) == Some(State::Suspect)),
        "node 4 suspected"
    );
    sim.heal();
    sim.run(3000 * MS);
    assert!(sim.all_alive());
    assert_eq!(reports(&sim, MemberState::Dead, Duration::ZERO), 0);
}

#[test]
fn a_partition_is_seen_within_two_seconds_and_merges_within_five_of_the_heal() {
    for seed in seeds() {
        let mut sim = cluster(5, seed);
        let cut_at = sim.elapsed();
        sim.partition(&[1, 2], &[3, 4, 5]);
        sim.run(15_000 * MS);
        for (a, b) in [(1, 3), (2, 5), (3, 1), (5, 2), (4, 1)] {
            let dead = sim.first_report(a, b, MemberState::Dead).unwrap() - cut_at;
            assert!(
                dead < 2000 * MS,
                "seed {seed}: {a} saw {b} dead after {dead:?}"
            );
        }
        sim.heal();
        let merged = sim.run_until(5000 * MS, 10 * MS, Sim::all_alive);
        assert!(
            merged.is_some(),
            "seed {seed}: not merged 5 s after the heal"
        );
        // Each side's verdicts reach the other with the heal, but only as
        // suspicions, which their subjects refute: nobody on one side ever
        // declares a member of its own side dead.
        for side in [&[1, 2][..], &[3, 4, 5][..]] {
            for &a in side {
                for &b in side {
                    assert!(
                        sim.first_report(a, b, MemberState::Dead).is_none(),
                        "seed {seed}: node {a} declared node {b} of its own side dead"
                    );
                }
            }
        }
    }
}

#[test]
fn a_pause_shorter_than_the_timeouts_raises_nothing_and_a_long_one_heals() {
    for seed in seeds() {
        let mut sim = cluster(5, seed);
        sim.pause(3, 500 * MS);
        sim.run(3000 * MS);
        assert_eq!(
            reports(&sim, MemberState::Suspect, Duration::ZERO),
            0,
            "seed {seed}"
        );
        sim.pause(3, 5000 * MS);
        sim.run(5000 * MS);
        assert!(sim.all_see(3, State::Dead), "seed {seed}");
        let back = sim.run_until(2000 * MS, 10 * MS, Sim::all_alive);
        assert!(
            back.is_some(),
            "seed {seed}: the paused node not back within 2 s"
        );
    }
}

#[test]
fn a_node_restarted_at_once_replaces_its_old_run_unsuspected() {
    for seed in seeds() {
        let mut sim = cluster(3, seed);
        let from = sim.elapsed();
        sim.kill(3);
        sim.run(200 * MS);
        sim.start_node(3, 2, &[1]);
        sim.run(3000 * MS);
        for id in 1..=2 {
            assert_eq!(sim.nodes[&id].swim.state_of(3), Some((2, State::Alive)));
            assert!(
                sim.nodes[&id]
                    .history
                    .iter()
                    .any(|&(_, m, run, s)| (m, run, s) == (3, 2, MemberState::Alive))
            );
        }
        assert_eq!(reports(&sim, MemberState::Suspect, from), 0, "seed {seed}");
    }
}

#[test]
fn another_nodes_death_verdict_is_a_suspicion_that_its_subject_refutes() {
    let mut sim = cluster(3, 1);
    // Node 1 hears from node 2 (run 1) that node 3 is dead, in 3's current
    // version: it suspects 3 instead, and 3 refutes.
    let verdict = Update {
        by: 2,
        ..Update::own(3, 1, 0, State::Dead, addr(3))
    };
    let now = sim.now;
    let node = sim.nodes.get_mut(&1).unwrap();
    node.swim.merge_state(now, vec![verdict]);
    assert_eq!(node.swim.state_of(3), Some((1, State::Suspect)));
    sim.run(2000 * MS);
    assert!(sim.all_alive());
    assert!(sim.first_report(1, 3, MemberState::Dead).is_none());
}

#[test]
fn an_unconfirmed_suspicion_lasts_longer_than_a_confirmed_one() {
    let config = config();
    let now = Instant::now();
    let swim = Swim::new(config, 1, 1, addr(1), Vec::new(), now, 1);
    let deadline = |by: Vec<NodeId>, live| {
        swim.suspicion_deadline(&Suspicion { started: now, by }, live) - now
    };
    assert_eq!(deadline(vec![2], 7), config.suspicion_max);
    assert!(deadline(vec![2, 3], 7) < config.suspicion_max);
    assert!(deadline(vec![2, 3], 7) > deadline(vec![2, 3, 4], 7));
    assert_eq!(deadline(vec![2, 3, 4, 5], 7), config.suspicion_timeout);
    // With fewer members than the confirmations looked for, all of them do
    // (4 live: the suspect, and three that may suspect it).
    assert_eq!(deadline(vec![2, 3, 4], 4), config.suspicion_timeout);
    assert!(deadline(vec![2, 3], 4) > config.suspicion_timeout);
    // Two live: nobody else can confirm.
    assert_eq!(deadline(vec![2], 2), config.suspicion_timeout);
}

#[test]
fn datagrams_stay_within_the_limit_in_a_large_cluster() {
    let mut sim = Sim::new(config(), 1);
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
fn a_departure_is_known_by_all_at_once() {
    let mut sim = cluster(5, 1);
    sim.nodes.get_mut(&5).unwrap().swim.leave();
    sim.run(500 * MS);
    sim.kill(5);
    assert!(sim.all_see(5, State::Left));
    sim.run(5000 * MS);
    assert!(sim.all_see(5, State::Left), "not suspected after leaving");
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
            by: 7,
            ..Update::own(1, 2, 3, State::Suspect, addr(1))
        },
        Update::own(u64::MAX, 5, 0, State::Left, "[::1]:7911".parse().unwrap()),
        Update {
            by: 3,
            ..Update::own(4, 5, 6, State::Dead, addr(4))
        },
    ];
    assert_eq!(decode_state(&encode_state(&updates)), Ok(updates));
    assert!(decode_state(&[0, 1, 2]).is_err());
}
