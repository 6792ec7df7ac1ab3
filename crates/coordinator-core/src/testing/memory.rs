//! The `Memory` carrier: many nodes in one process, for tests (ours and the
//! application's), with fault injection between named nodes.

use crate::api::NodeId;
use crate::engine::{Node, Settings};
use crate::error::{Error, TransportError};
use crate::testing::Faults;
use crate::transport::{Inbound, InboundSender, Link, Transport, inbound};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

/// An in-process network of nodes.
#[derive(Debug, Default)]
pub struct MemoryNetwork {
    /// Copied on write: a publish takes a snapshot without holding the lock.
    nodes: RwLock<Arc<HashMap<NodeId, InboundSender>>>,
    faults: Arc<Faults>,
}

impl MemoryNetwork {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The faults applied between the nodes of this network.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// Connects `node` (replacing an earlier connection of the same id).
    pub fn connect(self: &Arc<Self>, node: NodeId) -> Link {
        let (sender, inbound) = inbound();
        Arc::make_mut(&mut self.nodes.write()).insert(node, sender.clone());
        Link {
            transport: Arc::new(MemoryTransport {
                network: self.clone(),
                node,
                mine: sender,
            }),
            inbound,
        }
    }

    /// Starts a node on this network, with this network's faults applied to what it receives.
    pub fn start(self: &Arc<Self>, settings: Settings) -> Result<Node, Error> {
        let link = self.connect(settings.node_id);
        Node::builder(settings, "Memory", link)
            .faults(self.faults.clone())
            .start()
    }

    fn route(&self, node: NodeId) -> Option<InboundSender> {
        self.nodes
            .read()
            .get(&node)
            .filter(|sender| !sender.is_closed())
            .cloned()
    }
}

struct MemoryTransport {
    network: Arc<MemoryNetwork>,
    node: NodeId,
    /// This connection's queue, to tell it from a later connection of the same id.
    mine: InboundSender,
}

#[async_trait]
impl Transport for MemoryTransport {
    async fn publish(&self, frame: Bytes) -> Result<(), TransportError> {
        let nodes = self.network.nodes.read().clone();
        for (_, peer) in nodes.iter().filter(|(id, _)| **id != self.node) {
            // A node that is gone simply does not receive it, as on a real network.
            peer.deliver(Inbound::Frame(frame.clone()));
        }
        Ok(())
    }

    async fn send_to(&self, node: NodeId, frame: Bytes) -> Result<(), TransportError> {
        let peer = self
            .network
            .route(node)
            .ok_or(TransportError::NoRoute(node))?;
        if peer.deliver(Inbound::Frame(frame)) {
            Ok(())
        } else {
            Err(TransportError::NoRoute(node))
        }
    }

    async fn close(&self) {
        let mut nodes = self.network.nodes.write();
        if nodes
            .get(&self.node)
            .is_some_and(|sender| sender.same_path(&self.mine))
        {
            Arc::make_mut(&mut nodes).remove(&self.node);
        }
    }
}
