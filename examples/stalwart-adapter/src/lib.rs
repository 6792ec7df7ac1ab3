//! The shape of Stalwart's own coordinator module (`crates/coordinator` in
//! Stalwart 0.16: `Coordinator::publish(topic: &'static str, Vec<u8>)`,
//! `Coordinator::subscribe(topic)` giving a stream whose messages have
//! `payload()` and `topic()`), built on this library from a Stalwart
//! coordinator object as Stalwart stores it.
//!
//! What Stalwart's module cannot say, this one does: a resynchronisation hook
//! is called when a broadcast from another node was lost (a `Gap`), when a
//! subscriber fell behind and messages were dropped for it, and when the
//! carrier's link comes back (`LinkUp`: what was published meanwhile may be
//! lost). That is where Stalwart would drop its caches.
//!
//! Stalwart uses the coordinator for broadcasts only, so heartbeats are off
//! unless the object turns them on (`"heartbeats": true`): nothing periodic
//! goes through the broker.

use bytes::Bytes;
use coordinator::{Coordinator as _, CoordinatorConfig, Event, Received, StreamKind};
use serde_json::Value;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Why the application should resynchronise what it caches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resync {
    /// `count` broadcasts of node `from` were lost.
    Gap { from: u64, count: u64 },
    /// Messages were dropped for a subscriber that did not keep up (or this
    /// adapter missed events itself: `queue` is then `"events"`).
    Overflow { queue: String, dropped: u64 },
    /// The carrier's link is back after it was down.
    LinkUp,
}

/// Why publishing or subscribing failed.
#[derive(Debug)]
pub enum AdapterError {
    /// The coordinator is `Disabled` (Stalwart answers "not supported").
    NotSupported,
    Coordinator(coordinator::Error),
}

impl std::fmt::Display for AdapterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdapterError::NotSupported => write!(f, "the coordinator is disabled"),
            AdapterError::Coordinator(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for AdapterError {}

/// Stalwart's `Coordinator`: a node of the cluster, or `None` when disabled.
#[derive(Clone, Default)]
pub enum Coordinator {
    Node(Arc<Running>),
    #[default]
    None,
}

/// A running node and the task that calls the resynchronisation hook.
pub struct Running {
    node: Arc<dyn coordinator::Coordinator>,
    watcher: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl Coordinator {
    /// Starts node `node_id` from Stalwart's coordinator object (its
    /// `@type` and fields as Stalwart serializes them); `Disabled` gives
    /// [`Coordinator::None`]. `on_resync` is called, on a task of its own,
    /// whenever cached state may have missed an update (see [`Resync`]).
    pub async fn build(
        object: &Value,
        node_id: u64,
        on_resync: impl Fn(Resync) + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let mut object = object.clone();
        let fields = object
            .as_object_mut()
            .ok_or("the coordinator object is not a JSON object")?;
        if fields.get("@type").and_then(Value::as_str) == Some("Disabled") {
            return Ok(Coordinator::None);
        }
        fields.insert("nodeId".into(), node_id.into());
        fields.entry("heartbeats").or_insert(Value::Bool(false));
        let config = CoordinatorConfig::from_value(object).map_err(|errors| errors.to_string())?;
        for warning in config.warnings() {
            tracing::warn!(%warning, "coordinator configuration");
        }
        let node = coordinator::start(&config)
            .await
            .map_err(|error| error.to_string())?;
        let watcher = tokio::spawn(watch(node.events(), on_resync));
        Ok(Coordinator::Node(Arc::new(Running {
            node: Arc::new(node),
            watcher,
        })))
    }

    pub async fn publish(&self, topic: &'static str, message: Vec<u8>) -> Result<(), AdapterError> {
        let node = self.node()?;
        node.broadcast(topic, Bytes::from(message))
            .await
            .map_err(AdapterError::Coordinator)
    }

    /// Receives what is published on `topic` from now on, by every node,
    /// this one included (as a broker's pub/sub does).
    pub async fn subscribe(&self, topic: &'static str) -> Result<PubSubStream, AdapterError> {
        let node = self.node()?;
        let subscription = node
            .subscribe(topic, coordinator::SubscribeOptions { receive_own: true })
            .await
            .map_err(AdapterError::Coordinator)?;
        Ok(PubSubStream { subscription })
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Coordinator::None)
    }

    pub fn is_enabled(&self) -> bool {
        !self.is_none()
    }

    /// The node underneath (members, stats, events), when enabled.
    pub fn node(&self) -> Result<&Arc<dyn coordinator::Coordinator>, AdapterError> {
        match self {
            Coordinator::Node(running) => Ok(&running.node),
            Coordinator::None => Err(AdapterError::NotSupported),
        }
    }

    /// Leaves the cluster (the others drop this node at once).
    pub async fn shutdown(&self) -> Result<(), AdapterError> {
        match self {
            Coordinator::Node(running) => {
                running.watcher.abort();
                running
                    .node
                    .leave()
                    .await
                    .map_err(AdapterError::Coordinator)
            }
            Coordinator::None => Ok(()),
        }
    }
}

async fn watch(
    mut events: coordinator::EventStream<Event>,
    on_resync: impl Fn(Resync) + Send + Sync + 'static,
) {
    let mut down = false;
    while let Some(received) = events.recv().await {
        let resync = match received {
            Received::Event(Event::Gap {
                from,
                stream: StreamKind::Broadcast,
                count,
                ..
            }) => Resync::Gap { from, count },
            Received::Event(Event::Overflow { queue, dropped }) => {
                Resync::Overflow { queue, dropped }
            }
            Received::Event(Event::LinkDown { .. }) => {
                down = true;
                continue;
            }
            Received::Event(Event::LinkUp) if down => {
                down = false;
                Resync::LinkUp
            }
            // Events this task missed may have been any of the above.
            Received::Missed(missed) => Resync::Overflow {
                queue: "events".into(),
                dropped: missed,
            },
            Received::Event(_) => continue,
        };
        on_resync(resync);
    }
}

/// The messages of one topic.
pub struct PubSubStream {
    subscription: coordinator::Subscription,
}

impl PubSubStream {
    pub async fn next(&mut self) -> Option<Msg> {
        self.subscription.recv().await.map(|message| Msg {
            topic: message.topic,
            payload: message.payload,
        })
    }
}

/// One message, as Stalwart's `Msg`.
pub struct Msg {
    topic: Arc<str>,
    payload: Bytes,
}

impl Msg {
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}
