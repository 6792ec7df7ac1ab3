//! `coordinator node --config FILE`: one node, by hand.

use anyhow::Context;
use bytes::Bytes;
use coordinator::{Coordinator, CoordinatorConfig, Received, SubscribeOptions};
use std::path::Path;
use tokio::io::{AsyncBufReadExt, BufReader};

pub async fn run(file: &Path, topic: &str) -> anyhow::Result<()> {
    super::init_logging("info");
    let config = CoordinatorConfig::from_file(file)
        .map_err(|errors| anyhow::anyhow!("{}:\n{errors}", file.display()))?;
    let node = coordinator::start(&config)
        .await
        .context("starting the node")?;
    println!(
        "node {} up on {}; type a line to broadcast it on {topic:?}, Ctrl-D or Ctrl-C to leave",
        node.node_id(),
        node.carrier()
    );
    let mut subscription = node.subscribe(topic, SubscribeOptions::default()).await?;
    let mut members = node.member_events();
    let mut events = node.events();
    let mut inbox = node.inbox()?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) => node.broadcast(topic, Bytes::from(line)).await?,
                None => break,
            },
            Some(message) = subscription.recv() => {
                println!("[{}] node {}: {}", message.topic, message.from, String::from_utf8_lossy(&message.payload));
            }
            Some(change) = members.recv() => match change {
                Received::Event(event) => println!("member {} ({}): {:?}", event.member.id, event.member.incarnation, event.change),
                Received::Missed(n) => println!("missed {n} membership events"),
            },
            Some(Received::Event(event)) = events.recv() => println!("event: {event:?}"),
            Some(incoming) = inbox.recv() => {
                println!("message from node {}: {}", incoming.from, String::from_utf8_lossy(&incoming.payload));
                if incoming.is_request() {
                    let _ = incoming.reply(Bytes::from_static(b"ok")).await;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    node.leave().await?;
    println!("left the cluster");
    Ok(())
}
