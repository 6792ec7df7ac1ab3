//! `coordinator demo`: a small cluster on the embedded default carrier, no broker.

use super::ms;
use anyhow::{Context, bail};
use bytes::Bytes;
use coordinator::{Coordinator, MemberChange, Node, NodeId, Settings, SubscribeOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The embedded default carrier: Native (TLS + gossip on loopback ports).
#[cfg(feature = "native")]
const CARRIER: &str = "Native (TLS RPC + UDP gossip on 127.0.0.1)";
#[cfg(not(feature = "native"))]
const CARRIER: &str = "Memory (in-process; this build has no Native carrier)";

/// Starts the demo's nodes one by one; each joins through those before it.
#[cfg(feature = "native")]
struct Launcher(coordinator_native::Loopback);

#[cfg(feature = "native")]
impl Launcher {
    fn new() -> Self {
        Self(coordinator_native::Loopback::new("demo"))
    }

    async fn start(&mut self, id: NodeId) -> anyhow::Result<Node> {
        Ok(self.0.start(id).await?)
    }
}

#[cfg(not(feature = "native"))]
struct Launcher(Arc<coordinator::testing::MemoryNetwork>);

#[cfg(not(feature = "native"))]
impl Launcher {
    fn new() -> Self {
        Self(coordinator::testing::MemoryNetwork::new())
    }

    async fn start(&mut self, id: NodeId) -> anyhow::Result<Node> {
        let key = format!("demo-{:x}", coordinator::new_incarnation());
        Ok(self.0.start(Settings::new(id).cluster_key(key))?)
    }
}

pub async fn run(count: u64) -> anyhow::Result<()> {
    super::init_logging("error");
    let defaults = Settings::new(0);
    println!("coordinator demo: {count} nodes on the {CARRIER} carrier, no broker needed");
    println!(
        "settings: heartbeatInterval {}, suspectTimeout {}, deadTimeout {}, envelopes authenticated with a cluster key\n",
        ms(defaults.heartbeat_interval),
        ms(defaults.suspect_timeout),
        ms(defaults.dead_timeout)
    );
    let mut launcher = Launcher::new();
    let clock = Instant::now();
    let at = |what: String| println!("[{:>9}] {what}", ms(clock.elapsed()));
    let mut nodes: Vec<Arc<Node>> = Vec::new();
    for id in 1..=count {
        nodes.push(Arc::new(launcher.start(id).await?));
        at(format!("node {id} started"));
        if nodes.len() > 1 {
            wait_until_all_see_each_other(&nodes, Duration::from_secs(5)).await?;
            at(format!("all {} nodes see each other", nodes.len()));
        }
    }

    println!();
    let mut subscriptions = Vec::new();
    for node in &nodes[1..] {
        subscriptions.push(
            node.subscribe("config.reload", SubscribeOptions::default())
                .await?,
        );
    }
    let sent = Instant::now();
    nodes[0]
        .broadcast(
            "config.reload",
            Bytes::from_static(b"tls certificate renewed"),
        )
        .await?;
    at("node 1 broadcasts \"tls certificate renewed\" on config.reload".into());
    for (node, subscription) in nodes[1..].iter().zip(subscriptions.iter_mut()) {
        let message = tokio::time::timeout(Duration::from_secs(5), subscription.recv())
            .await
            .context("broadcast not received within 5 s")?
            .context("subscription closed")?;
        at(format!(
            "node {} received {:?} from node {} after {}",
            node.node_id(),
            String::from_utf8_lossy(&message.payload),
            message.from,
            ms(sent.elapsed())
        ));
    }

    let mut inbox = nodes[1].inbox()?;
    let server = tokio::spawn(async move {
        while let Some(request) = inbox.recv().await {
            let answer = format!(
                "quota of {} is 2 GiB",
                String::from_utf8_lossy(&request.payload)
            );
            let _ = request.reply(Bytes::from(answer)).await;
        }
    });
    let asked = Instant::now();
    let reply = nodes[0]
        .request(
            2,
            Bytes::from_static(b"alice@example.org"),
            Duration::from_secs(5),
        )
        .await?;
    at(format!(
        "node 1 asked node 2 about alice@example.org; reply {:?} in {}",
        String::from_utf8_lossy(&reply),
        ms(asked.elapsed())
    ));
    server.abort();

    println!();
    let victim = nodes.last().expect("at least two nodes").clone();
    let victim_id = victim.node_id();
    // One watcher per surviving node, so each detection is timed when it happens.
    let (sender, mut seen) = tokio::sync::mpsc::unbounded_channel();
    for node in &nodes[..nodes.len() - 1] {
        let (observer, mut events, sender) = (node.node_id(), node.member_events(), sender.clone());
        tokio::spawn(async move {
            while let Some(event) = events.next_event().await {
                if event.member.id == victim_id
                    && sender
                        .send((observer, event.change.clone(), Instant::now()))
                        .is_err()
                {
                    break;
                }
                if event.member.id == victim_id && event.change == MemberChange::Died {
                    break;
                }
            }
        });
    }
    drop(sender);
    victim.abort();
    let killed = Instant::now();
    at(format!("node {victim_id} stopped abruptly (no goodbye)"));
    let mut detected = Vec::new();
    while detected.len() < nodes.len() - 1 {
        let (observer, change, when) = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .context("the failure was not detected within 10 s")?
            .context("a watcher stopped")?;
        let after = when - killed;
        match change {
            MemberChange::Suspected => at(format!(
                "node {observer} suspects node {victim_id} ({} after the stop)",
                ms(after)
            )),
            MemberChange::Died => {
                at(format!(
                    "node {observer} declares node {victim_id} dead ({} after the stop)",
                    ms(after)
                ));
                detected.push(after);
            }
            _ => {}
        }
    }
    let slowest = detected.iter().max().copied().unwrap_or_default();
    println!(
        "\nnode {victim_id} was declared dead by every other node within {}",
        ms(slowest)
    );
    let healthy = nodes[..nodes.len() - 1].iter().all(|n| {
        n.members()
            .iter()
            .filter(|m| m.id != victim_id)
            .all(|m| m.state == coordinator::MemberState::Alive)
    });
    if !healthy {
        bail!("a healthy node was marked suspect or dead");
    }
    let stats = nodes[0].stats();
    println!(
        "no healthy node was suspected; node 1 sent {} heartbeats, received {} frames, dropped {}",
        stats.heartbeats_sent,
        stats.frames_received,
        stats.dropped_malformed
            + stats.dropped_unauthenticated
            + stats.dropped_duplicate
            + stats.dropped_stale
    );
    for node in &nodes[..nodes.len() - 1] {
        node.leave().await?;
    }
    Ok(())
}

async fn wait_until_all_see_each_other(nodes: &[Arc<Node>], limit: Duration) -> anyhow::Result<()> {
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.node_id()).collect();
    for node in nodes {
        let formed =
            tokio::time::timeout(limit, coordinator::wait_for_members(node.as_ref(), &ids)).await;
        anyhow::ensure!(
            formed == Ok(true),
            "node {} did not see the others in time",
            node.node_id()
        );
    }
    Ok(())
}
