//! `coordinator node --config FILE`: one node, by hand or as a service.

use anyhow::Context;
use bytes::Bytes;
use coordinator::{Coordinator, CoordinatorConfig, Received, SubscribeOptions};
use std::path::Path;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Stops the admin server with the node.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one node until SIGTERM or SIGINT (or, with `stdin`, the end of
/// standard input), then leaves the cluster gracefully.
pub async fn run(
    file: &Path,
    topic: &str,
    stdin: bool,
    admin: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    super::init_logging("info");
    let config = CoordinatorConfig::from_file(file)
        .map_err(|errors| anyhow::anyhow!("{}:\n{errors}", file.display()))?;
    let node: std::sync::Arc<dyn Coordinator> = std::sync::Arc::new(
        coordinator::start(&config)
            .await
            .context("starting the node")?,
    );
    let admin = match admin {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--admin {addr}"))?;
            let bound = listener.local_addr()?;
            let server = tokio::spawn(super::admin::serve(listener, node.clone()));
            Some((AbortOnDrop(server), bound))
        }
        None => None,
    };
    if stdin {
        println!(
            "node {} up on {}; type a line to broadcast it on {topic:?}, Ctrl-D or Ctrl-C to leave",
            node.node_id(),
            node.carrier()
        );
    } else {
        println!(
            "node {} up on {}; listening on {topic:?}; SIGTERM or Ctrl-C to leave",
            node.node_id(),
            node.carrier()
        );
    }
    if let Some((_, bound)) = &admin {
        println!("admin: http://{bound}/metrics and http://{bound}/members");
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    let mut members = node.member_events();
    // Who is already known (the changes from here on follow).
    for member in node.members().into_iter().filter(|m| !m.local) {
        println!(
            "member {} ({}): {:?} (known at start)",
            member.id, member.incarnation, member.state
        );
    }
    let mut subscription = node.subscribe(topic, SubscribeOptions::default()).await?;
    let mut events = node.events();
    let mut inbox = node.inbox()?;
    // Standard input is not touched unless asked for: a service has none.
    let mut lines = stdin.then(|| BufReader::new(tokio::io::stdin()).lines());
    loop {
        tokio::select! {
            line = async { lines.as_mut().expect("guarded").next_line().await }, if lines.is_some() => match line? {
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
            _ = terminate.recv() => break,
        }
    }
    node.leave().await?;
    println!("left the cluster");
    Ok(())
}
