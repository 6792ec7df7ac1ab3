//! A real Raft (openraft, through `coordinator-openraft`) on a carrier: the
//! `raft-kv` example store on three nodes. See [`crate::raft_suite!`].

use crate::harness::Harness;
use crate::wait::{converge, within};
use coordinator_core::NodeId;
use raft_kv::{Command, Fingerprint, KvNode, Storage, WriteError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Long enough for an election and a catch-up on the slowest carrier
/// (Kafka on Tansu) on a loaded two-core machine.
const LIMIT: Duration = Duration::from_secs(30);
/// Writes in flight at once (openraft batches them into appends).
const IN_FLIGHT: usize = 32;

/// Three nodes elect a leader and commit 1,000 writes that every node
/// applies in the same order; the leader's node is killed and the other two
/// elect a new leader and keep committing (past a snapshot and a purge of
/// the log); the killed node comes back with its stored log and catches up
/// with everything it missed, through a snapshot.
pub async fn replicates_fails_over_and_catches_up(mut harness: impl Harness) {
    let ids = [1, 2, 3];
    let mut storage: BTreeMap<NodeId, Storage> = BTreeMap::new();
    let mut coordinators = Vec::new();
    for id in ids {
        coordinators.push(harness.start(id).await);
        storage.insert(id, Storage::default());
    }
    converge(&coordinators, LIMIT).await;
    let mut nodes: BTreeMap<NodeId, Arc<KvNode>> = BTreeMap::new();
    for coordinator in coordinators {
        let id = coordinator.node_id();
        let node = KvNode::start(coordinator, raft_kv::raft_config(), storage[&id].clone())
            .await
            .expect("Raft starts");
        nodes.insert(id, Arc::new(node));
    }
    nodes[&1]
        .initialize(&ids)
        .await
        .expect("cluster initialized");

    let leader = agreed_leader(&nodes, None).await;
    write(&nodes[&leader], 0..1000).await;
    same_state(&nodes, 1000).await;
    for node in nodes.values() {
        assert_eq!(
            node.get("key-999").as_deref(),
            Some("value-999"),
            "node {}",
            node.id()
        );
    }

    // The leader's node dies: its coordinator goes without leaving.
    harness.kill(leader).await;
    let old = nodes.remove(&leader).expect("the leader runs");
    Arc::into_inner(old)
        .expect("no write holds it")
        .stop()
        .await;
    let killed = Instant::now();
    let new_leader = agreed_leader(&nodes, Some(leader)).await;
    assert_ne!(new_leader, leader);
    let elected_after = killed.elapsed();
    // Enough that the leader snapshots and purges what the killed node lacks.
    write(&nodes[&new_leader], 1000..1700).await;
    same_state(&nodes, 1700).await;

    // It comes back (a new incarnation) with what it had stored.
    let coordinator = harness.start(leader).await;
    let all: Vec<_> = nodes
        .values()
        .map(|n| n.coordinator().clone())
        .chain([coordinator.clone()])
        .collect();
    converge(&all, LIMIT).await;
    let node = KvNode::start(
        coordinator,
        raft_kv::raft_config(),
        storage[&leader].clone(),
    )
    .await
    .expect("Raft restarts");
    nodes.insert(leader, Arc::new(node));
    same_state(&nodes, 1700).await;
    let installed = storage[&leader].state.snapshots_installed();
    assert!(
        installed >= 1,
        "the rejoined node caught up without a snapshot: the test no longer covers InstallSnapshot"
    );

    // And takes part again: a write through it (forwarded to the leader)
    // reaches all three. A forward whose request or reply the carrier lost
    // (Memory with loss) times out with its outcome unknown: it is sent
    // again, and may then be applied twice.
    let mut unknown = 0;
    within(LIMIT, "a write through the rejoined node", async {
        loop {
            match nodes[&leader].set("after", "rejoin").await {
                Ok(applied) => {
                    if unknown == 0 {
                        assert_eq!(applied.previous, None);
                    }
                    break;
                }
                Err(WriteError::NoLeader) => {
                    let raft = nodes[&leader].raft();
                    raft.wait(None)
                        .metrics(|m| m.current_leader.is_some(), "a leader")
                        .await
                        .expect("Raft runs");
                }
                Err(WriteError::Forward(coordinator_core::Error::Timeout { .. })) => unknown += 1,
                Err(error) => panic!("write through the rejoined node failed: {error}"),
            }
        }
    })
    .await;
    same_state_within(&nodes, 1701, 1701 + unknown).await;
    for node in nodes.values() {
        assert_eq!(
            node.get("after").as_deref(),
            Some("rejoin"),
            "node {}",
            node.id()
        );
    }
    eprintln!(
        "{}: new leader {new_leader} elected {elected_after:?} after node {leader} was killed",
        harness.carrier()
    );
}

/// Waits until every node names the same leader, other than `not`.
async fn agreed_leader(nodes: &BTreeMap<NodeId, Arc<KvNode>>, not: Option<NodeId>) -> NodeId {
    let rafts = nodes.values().map(|n| n.raft());
    within(
        LIMIT,
        "the nodes to agree on a leader",
        raft_kv::agreed_leader(rafts, not),
    )
    .await
    .expect("no Raft stopped")
}

/// Commits `keys` through `leader`, `IN_FLIGHT` at a time; every write must
/// succeed (the leader is stable while it runs).
async fn write(leader: &Arc<KvNode>, keys: std::ops::Range<u32>) {
    let what = format!("writes {keys:?} to commit");
    within(LIMIT, &what, async {
        let mut running = JoinSet::new();
        for key in keys {
            if running.len() >= IN_FLIGHT {
                running
                    .join_next()
                    .await
                    .expect("one runs")
                    .expect("no panic");
            }
            let leader = leader.clone();
            running.spawn(async move {
                let command = Command::Set {
                    key: format!("key-{key}"),
                    value: format!("value-{key}"),
                };
                if let Err(error) = leader.write(command).await {
                    panic!("write {key} failed on the leader: {error}");
                }
            });
        }
        while let Some(done) = running.join_next().await {
            done.expect("no panic");
        }
    })
    .await
}

/// Waits until every node has applied `commands` commands, and checks that
/// they all applied them at the same indexes in the same order.
async fn same_state(nodes: &BTreeMap<NodeId, Arc<KvNode>>, commands: u64) {
    same_state_within(nodes, commands, commands).await
}

/// As [`same_state`], for a count known to lie between `commands` and `most`.
async fn same_state_within(nodes: &BTreeMap<NodeId, Arc<KvNode>>, commands: u64, most: u64) {
    let what = format!("every node to apply {commands} commands");
    // Until every node has applied as many as any other.
    let mut wanted = commands;
    loop {
        within(LIMIT, &what, async {
            for node in nodes.values() {
                node.storage().state.applied_at_least(wanted).await;
            }
        })
        .await;
        let counts: Vec<u64> = nodes.values().map(|n| n.fingerprint().commands).collect();
        let highest = counts.iter().copied().max().unwrap_or(wanted);
        if highest > most || counts.iter().all(|&count| count == highest) {
            break;
        }
        wanted = highest;
    }
    let prints: Vec<(NodeId, Fingerprint)> =
        nodes.values().map(|n| (n.id(), n.fingerprint())).collect();
    for (id, print) in &prints {
        assert!(
            print.commands <= most,
            "node {id} applied {} commands, more than the {most} written",
            print.commands
        );
        assert_eq!(
            print, &prints[0].1,
            "node {id} applied other commands, or in another order, than node {}",
            prints[0].0
        );
    }
}

/// Instantiates the Raft tests for one carrier: `raft::<carrier>::<test>`.
#[macro_export]
macro_rules! raft_suite {
    ($carrier:ident, $make:path) => {
        mod $carrier {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn replicates_fails_over_and_catches_up() {
                $crate::raft::replicates_fails_over_and_catches_up($make().await).await;
            }
        }
    };
}
