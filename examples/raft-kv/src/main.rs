//! `raft-kv`: a replicated key-value store on the coordinator.
//!
//! * `raft-kv demo`: three nodes on the Native carrier in this process (no
//!   broker): a leader is elected, writes are replicated, the leader's node
//!   is killed, a new leader takes over, the old node comes back and catches up.
//! * `raft-kv node --config FILE [--init 1,2,3]`: one node on the carrier
//!   that FILE configures (the same JSON as `coordinator node`); commands on
//!   standard input: `set KEY VALUE`, `del KEY`, `get KEY`, `leader`, `status`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use coordinator::{Coordinator, CoordinatorConfig, NodeId};
use openraft::rt::WatchReceiver;
use raft_kv::{Command, KvNode, Storage};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(about = "A replicated key-value store: openraft over the coordinator")]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Three nodes on Native in this process: election, writes, fail-over, catch-up.
    Demo {
        /// Writes before and after the fail-over.
        #[arg(long, default_value_t = 1000)]
        writes: u32,
    },
    /// One node on the configured carrier, driven from standard input.
    Node {
        /// The coordinator configuration (JSON, as for `coordinator node`).
        #[arg(long)]
        config: std::path::PathBuf,
        /// Node ids of the initial cluster; give it on one node only, once.
        #[arg(long, value_delimiter = ',')]
        init: Vec<NodeId>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // openraft logs every failed RPC to a stopped node as an error.
                .unwrap_or_else(|_| "error,openraft=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Mode::Demo { writes } => demo(writes).await,
        Mode::Node { config, init } => node(&config, &init).await,
    }
}

async fn demo(writes: u32) -> anyhow::Result<()> {
    let clock = Instant::now();
    let at = |what: String| println!("[{:>8.1} ms] {what}", clock.elapsed().as_secs_f64() * 1e3);
    // Native nodes on 127.0.0.1, free ports, each joining through the others.
    let mut launcher = coordinator_native::Loopback::new("raft-kv-demo");
    let ids = [1, 2, 3];
    let storage: Vec<Storage> = ids.iter().map(|_| Storage::default()).collect();
    let mut nodes: Vec<Option<Arc<KvNode>>> = Vec::new();
    let mut coordinators = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let coordinator: Arc<dyn Coordinator> = Arc::new(launcher.start(id).await?);
        coordinators.push(coordinator.clone());
        let node = KvNode::start(coordinator, raft_kv::raft_config(), storage[i].clone()).await?;
        nodes.push(Some(Arc::new(node)));
    }
    for coordinator in &coordinators {
        tokio::time::timeout(
            Duration::from_secs(10),
            coordinator::wait_for_members(coordinator.as_ref(), &ids),
        )
        .await
        .context("the nodes did not see each other within 10 s")?;
    }
    at("3 nodes on Native (TLS + gossip on 127.0.0.1) see each other".into());
    live(&nodes)[0].initialize(&ids).await?;
    let leader = wait_leader(&nodes, None).await?;
    at(format!("node {leader} is the leader"));

    let started = Instant::now();
    write_all(&live(&nodes), leader, 0..writes).await?;
    let took = started.elapsed();
    wait_applied(&nodes, writes as u64).await?;
    at(format!(
        "{writes} writes committed in {:.0} ms ({:.0}/s); every node applied them in the same order",
        took.as_secs_f64() * 1e3,
        writes as f64 / took.as_secs_f64()
    ));

    let index = (leader - 1) as usize;
    let old = nodes[index].take().expect("the leader runs");
    coordinators[index].leave().await.ok();
    Arc::into_inner(old)
        .expect("no write holds it")
        .stop()
        .await;
    let killed = Instant::now();
    at(format!("node {leader} stopped"));
    let new_leader = wait_leader(&nodes, Some(leader)).await?;
    at(format!(
        "node {new_leader} is the new leader, {:.0} ms later",
        killed.elapsed().as_secs_f64() * 1e3
    ));
    write_all(&live(&nodes), new_leader, writes..2 * writes).await?;
    wait_applied(&nodes, 2 * writes as u64).await?;
    at(format!(
        "{writes} more writes committed by the two nodes left"
    ));

    let coordinator: Arc<dyn Coordinator> = Arc::new(launcher.start(leader).await?);
    let node = KvNode::start(coordinator, raft_kv::raft_config(), storage[index].clone()).await?;
    nodes[index] = Some(Arc::new(node));
    let back = Instant::now();
    wait_applied(&nodes, 2 * writes as u64).await?;
    at(format!(
        "node {leader} came back and caught up in {:.0} ms ({} snapshot installed)",
        back.elapsed().as_secs_f64() * 1e3,
        storage[index].state.snapshots_installed()
    ));
    let prints: Vec<_> = live(&nodes).iter().map(|n| n.fingerprint()).collect();
    anyhow::ensure!(
        prints.iter().all(|p| *p == prints[0]),
        "the nodes disagree: {prints:?}"
    );
    at(format!(
        "all 3 nodes hold the same {} keys, applied in the same order",
        live(&nodes)[0].storage().state.len()
    ));
    Ok(())
}

fn live(nodes: &[Option<Arc<KvNode>>]) -> Vec<Arc<KvNode>> {
    nodes.iter().flatten().cloned().collect()
}

async fn wait_leader(nodes: &[Option<Arc<KvNode>>], not: Option<NodeId>) -> anyhow::Result<NodeId> {
    let live = live(nodes);
    let rafts = live.iter().map(|n| n.raft());
    tokio::time::timeout(Duration::from_secs(10), raft_kv::agreed_leader(rafts, not))
        .await
        .context("no leader within 10 s")?
        .context("a Raft node stopped")
}

async fn wait_applied(nodes: &[Option<Arc<KvNode>>], commands: u64) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(30), async {
        for node in live(nodes) {
            node.storage().state.applied_at_least(commands).await;
        }
    })
    .await
    .context("not applied everywhere within 30 s")
}

async fn write_all(
    nodes: &[Arc<KvNode>],
    leader: NodeId,
    keys: std::ops::Range<u32>,
) -> anyhow::Result<()> {
    let leader = nodes
        .iter()
        .find(|n| n.id() == leader)
        .context("the leader runs")?
        .clone();
    let mut running = tokio::task::JoinSet::new();
    for key in keys {
        if running.len() >= 32 {
            running.join_next().await.expect("one runs")??;
        }
        let leader = leader.clone();
        running.spawn(async move {
            leader
                .set(format!("key-{key}"), format!("value-{key}"))
                .await
                .map(|_| ())
        });
    }
    while let Some(done) = running.join_next().await {
        done??;
    }
    Ok(())
}

async fn node(config: &std::path::Path, init: &[NodeId]) -> anyhow::Result<()> {
    let config = CoordinatorConfig::from_file(config)?;
    let coordinator: Arc<dyn Coordinator> = Arc::new(coordinator::start(&config).await?);
    let node = KvNode::start(
        coordinator.clone(),
        raft_kv::raft_config(),
        Storage::default(),
    )
    .await?;
    println!(
        "raft-kv node {} on {}; commands: set KEY VALUE | del KEY | get KEY | leader | status",
        node.id(),
        coordinator.carrier()
    );
    if !init.is_empty() {
        coordinator::wait_for_members(coordinator.as_ref(), init).await;
        node.initialize(init).await?;
        println!("initialized the cluster {init:?}");
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["set", key, value @ ..] if !value.is_empty() => {
                let command = Command::Set {
                    key: key.to_string(),
                    value: value.join(" "),
                };
                match node.write(command).await {
                    Ok(applied) => println!("ok (was {:?})", applied.previous),
                    Err(error) => println!("error: {error}"),
                }
            }
            ["del", key] => match node
                .write(Command::Delete {
                    key: key.to_string(),
                })
                .await
            {
                Ok(applied) => println!("ok (was {:?})", applied.previous),
                Err(error) => println!("error: {error}"),
            },
            ["get", key] => println!("{:?}", node.get(key)),
            ["leader"] => println!("{:?}", node.leader()),
            ["status"] => {
                let metrics = node.raft().metrics().borrow_watched().clone();
                println!(
                    "state {:?}, term {}, leader {:?}, applied {:?}, keys {}",
                    metrics.state,
                    metrics.current_term,
                    metrics.current_leader,
                    metrics.last_applied.map(|id| id.index),
                    node.storage().state.len()
                );
            }
            [] => {}
            _ => println!("commands: set KEY VALUE | del KEY | get KEY | leader | status"),
        }
    }
    node.stop().await;
    coordinator.leave().await.ok();
    Ok(())
}
