//! The resolved settings a node runs with.

use crate::api::NodeId;
use crate::config::{ClusterConfig, SecretString};
use crate::error::Error;
use std::time::Duration;

/// Everything the engine needs, resolved (node id known, secrets read).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Settings {
    pub node_id: NodeId,
    pub cluster: String,
    pub cluster_key: Option<SecretString>,
    pub encrypt: bool,
    /// Heartbeats through the carrier (`heartbeats` of the configuration).
    pub heartbeats: bool,
    pub heartbeat_interval: Duration,
    pub suspect_timeout: Duration,
    pub dead_timeout: Duration,
    pub reorder_timeout: Duration,
    pub max_message_size: usize,
    /// Messages buffered per subscription and in the inbox before new ones are
    /// dropped (and reported as [`crate::Event::Overflow`]).
    pub queue_capacity: usize,
    /// How long a dead or departed member is remembered.
    pub forget_after: Duration,
    /// How long the carrier may take to send one frame, and how long a frame
    /// may wait behind others for the same destination, before the send
    /// fails (a stalled link). A frame that timed out may still arrive.
    pub send_timeout: Duration,
    /// Bytes of out-of-order messages held, over all senders, while missing
    /// ones are awaited; beyond it the largest holder gives up waiting (a gap).
    pub max_held_bytes: usize,
    /// Bytes that may wait for the carrier per destination, and for
    /// broadcasts: beyond it `send` and `request` fail with
    /// [`Error::Backlog`] and `broadcast` waits for room.
    pub max_outgoing_bytes: usize,
    /// Bytes of messages waiting for the application per subscription and in
    /// the inbox; beyond it (or `queue_capacity` messages) new ones are
    /// dropped and reported as [`crate::Event::Overflow`].
    pub max_queue_bytes: usize,
    /// Other nodes known at most (members, and the dead and departed
    /// remembered for `forget_after`): a node beyond it is ignored, and
    /// reported as [`crate::Event::Overflow`], until one is forgotten.
    pub max_members: usize,
    /// This run's incarnation; a fresh one (see [`super::new_incarnation`]) when `None`.
    /// A carrier that needs it before the node starts sets it.
    pub incarnation: Option<u64>,
    /// The carrier authenticates every link with the cluster key, so
    /// envelopes go unsealed (set from
    /// [`crate::transport::Transport::authenticates_links`] when the node
    /// starts; see [`crate::envelope::Codec::on_authenticated_links`]).
    pub authenticated_links: bool,
}

impl Settings {
    /// Defaults of [`ClusterConfig`] for the given node.
    pub fn new(node_id: NodeId) -> Self {
        Self::with_config(node_id, None, &ClusterConfig::default())
    }

    /// Resolves a configuration: the node id and the cluster key.
    pub fn from_config(config: &ClusterConfig) -> Result<Self, Error> {
        let node_id = config.resolve_node_id().map_err(Error::Start)?;
        let key = config
            .cluster_key
            .resolve("clusterKey")
            .map_err(|error| Error::Start(error.to_string()))?;
        Ok(Self::with_config(node_id, key, config))
    }

    fn with_config(
        node_id: NodeId,
        cluster_key: Option<SecretString>,
        config: &ClusterConfig,
    ) -> Self {
        Self {
            node_id,
            cluster: config.cluster.clone(),
            encrypt: config.encrypt && cluster_key.is_some(),
            cluster_key,
            heartbeats: config.heartbeats,
            heartbeat_interval: config.heartbeat_interval,
            suspect_timeout: config.suspect_timeout,
            dead_timeout: config.dead_timeout,
            reorder_timeout: config.reorder_timeout,
            max_message_size: config.max_message_size as usize,
            queue_capacity: 65_536,
            forget_after: Duration::from_secs(600),
            send_timeout: Duration::from_secs(5),
            max_held_bytes: 64 << 20,
            max_outgoing_bytes: 4 << 20,
            max_queue_bytes: 256 << 20,
            max_members: crate::membership::MAX_PEERS,
            incarnation: None,
            authenticated_links: false,
        }
    }

    /// Sets the cluster key (every envelope is authenticated with it).
    pub fn cluster_key(mut self, key: impl Into<String>) -> Self {
        self.cluster_key = Some(SecretString::new(key));
        self
    }

    /// Also encrypts payloads (needs a cluster key).
    pub fn encrypt(mut self, encrypt: bool) -> Self {
        self.encrypt = encrypt;
        self
    }

    /// Sets the heartbeat interval and the failure-detection time-outs.
    pub fn timing(mut self, heartbeat: Duration, suspect: Duration, dead: Duration) -> Self {
        self.heartbeat_interval = heartbeat;
        self.suspect_timeout = suspect;
        self.dead_timeout = dead;
        self
    }

    /// Turns heartbeats off (or on again): see [`ClusterConfig::heartbeats`].
    pub fn heartbeats(mut self, on: bool) -> Self {
        self.heartbeats = on;
        self
    }

    /// Sets how long out-of-order messages wait before a gap is declared.
    pub fn reorder_timeout(mut self, timeout: Duration) -> Self {
        self.reorder_timeout = timeout;
        self
    }

    /// Sets the cluster name.
    pub fn cluster(mut self, name: impl Into<String>) -> Self {
        self.cluster = name.into();
        self
    }

    /// Fixes this run's incarnation (it must be higher than any earlier run's).
    pub fn incarnation(mut self, incarnation: u64) -> Self {
        self.incarnation = Some(incarnation);
        self
    }

    /// Sets how long a send may take, or wait its turn, before it fails.
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// Sets the memory bounds, in bytes: messages held out of order (all
    /// senders), messages waiting for the carrier (per destination), and
    /// messages waiting for the application (per queue).
    pub fn memory(mut self, held: usize, outgoing: usize, queue: usize) -> Self {
        self.max_held_bytes = held;
        self.max_outgoing_bytes = outgoing;
        self.max_queue_bytes = queue;
        self
    }

    /// Sets how many other nodes are known at most.
    pub fn max_members(mut self, max: usize) -> Self {
        self.max_members = max.max(1);
        self
    }

    /// Sets the per-subscription and inbox queue size.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }
}
