//! Native nodes on 127.0.0.1 in one process, for demos, benchmarks, examples
//! and tests: free ports, each node joins through those started before it,
//! one cluster key for all of them.

use crate::NAME;
use crate::transport::connect;
use coordinator_core::config::NativeConfig;
use coordinator_core::{Error, Node, NodeId, Settings, new_incarnation};
use std::net::SocketAddr;

/// Starts Native nodes on loopback one by one.
pub struct Loopback {
    key: String,
    cluster: String,
    seeds: Vec<SocketAddr>,
    queue_capacity: usize,
}

impl Loopback {
    /// Nodes of cluster `cluster` with a random cluster key (nothing else on
    /// this host can join them).
    pub fn new(cluster: impl Into<String>) -> Self {
        Self::with_key(cluster, format!("loopback-{:032x}", rand::random::<u128>()))
    }

    /// Nodes with the given cluster key (to let a test's own client in).
    pub fn with_key(cluster: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            cluster: cluster.into(),
            seeds: Vec::new(),
            queue_capacity: Settings::new(0).queue_capacity,
        }
    }

    /// Sets how many messages each subscription and inbox can hold.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// Starts node `id` (again, with a new incarnation, if it ran before),
    /// joining through every node started before.
    pub async fn start(&mut self, id: NodeId) -> Result<Node, Error> {
        let settings = Settings::new(id)
            .cluster(self.cluster.clone())
            .cluster_key(self.key.clone())
            .queue_capacity(self.queue_capacity)
            .incarnation(new_incarnation());
        let config = NativeConfig {
            bind_addr: [127, 0, 0, 1].into(),
            port: 0,
            seed_nodes: self.seeds.iter().map(|addr| addr.to_string()).collect(),
            ..Default::default()
        };
        let (link, transport) = connect(&config, &settings, Default::default()).await?;
        self.seeds.push(transport.local_addr());
        Node::start(settings, NAME, link)
    }

    /// The addresses of the nodes started so far, in order.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.seeds
    }
}
