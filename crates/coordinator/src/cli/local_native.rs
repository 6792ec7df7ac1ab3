//! Native nodes on 127.0.0.1 for the demo and the benchmark: free ports, the
//! nodes started before are the seeds of the next, a fresh cluster key per run.

use coordinator::{Node, NodeId, Settings};
use std::net::SocketAddr;

/// Starts Native nodes one by one; each joins through those started before.
pub struct LocalNative {
    key: String,
    seeds: Vec<SocketAddr>,
    queue_capacity: usize,
}

impl LocalNative {
    /// A launcher with a random cluster key (nothing else on this host can join).
    pub fn new() -> Self {
        Self {
            key: format!("local-{:032x}", random_u128()),
            seeds: Vec::new(),
            queue_capacity: Settings::new(0).queue_capacity,
        }
    }

    /// Sets how many messages each subscription and inbox can hold.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    pub async fn start(&mut self, id: NodeId, cluster: &str) -> anyhow::Result<Node> {
        let settings = Settings::new(id)
            .cluster(cluster)
            .cluster_key(self.key.clone())
            .queue_capacity(self.queue_capacity)
            .incarnation(coordinator::new_incarnation());
        let config = coordinator::config::NativeConfig {
            bind_addr: [127, 0, 0, 1].into(),
            port: 0,
            seed_nodes: self.seeds.iter().map(|addr| addr.to_string()).collect(),
            ..Default::default()
        };
        let (link, transport) =
            coordinator_native::connect(&config, &settings, Default::default()).await?;
        self.seeds.push(transport.local_addr());
        Ok(Node::start(settings, coordinator_native::NAME, link)?)
    }
}

fn random_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let mut high = state.build_hasher();
    high.write_u128(coordinator::new_incarnation() as u128);
    (u128::from(high.finish()) << 64) | u128::from(state.build_hasher().finish())
}
