//! What a carrier implements: publish to all, send to one node, and a stream
//! of what arrives for this node. The engine does everything else.

use crate::api::{DropReason, MemberState, NodeId};
use crate::error::TransportError;
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Moves encoded envelopes. Implementations must keep per-destination FIFO order
/// for frames sent from one task; they need not de-duplicate, authenticate or
/// number anything.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Sends a frame to every other node of the cluster. Echoing it back to this
    /// node is allowed (the engine drops its own frames).
    async fn publish(&self, frame: Bytes) -> Result<(), TransportError>;

    /// Sends a frame to one node.
    async fn send_to(&self, node: NodeId, frame: Bytes) -> Result<(), TransportError>;

    /// Releases the carrier's resources. Frames stop flowing both ways.
    async fn close(&self) {}

    /// Whether this carrier detects failures itself and reports every member's
    /// state as [`Inbound::Member`]. When it does, the engine's membership
    /// follows those reports instead of timing out silent nodes.
    fn reports_membership(&self) -> bool {
        false
    }
}

/// What a carrier hands to the engine.
#[derive(Debug)]
pub enum Inbound {
    /// A frame for this node (broadcast or addressed to it).
    Frame(Bytes),
    /// The link to the broker or a peer went down; the carrier is reconnecting.
    LinkDown(String),
    /// The link is back.
    LinkUp,
    /// The carrier's failure detector's verdict on a member (only from carriers
    /// whose [`Transport::reports_membership`] is true).
    Member {
        id: NodeId,
        /// The member's run (its engine incarnation).
        incarnation: u64,
        state: MemberState,
    },
    /// The carrier refused something before it became a frame (a connection
    /// without the cluster key, garbage on its port, a replayed datagram…):
    /// counted and reported like a dropped frame.
    Refused { reason: DropReason, detail: String },
}

/// A connected carrier: the sending half and the stream of what arrives.
pub struct Link {
    pub transport: Arc<dyn Transport>,
    pub inbound: mpsc::Receiver<Inbound>,
}

/// The carrier of a single node (`Disabled`): nobody else to talk to.
pub(crate) struct Alone {
    // Kept so the inbound stream stays open for as long as the node runs.
    _keep_open: mpsc::Sender<Inbound>,
}

impl Alone {
    pub fn link() -> Link {
        let (sender, inbound) = mpsc::channel(1);
        Link {
            transport: Arc::new(Alone { _keep_open: sender }),
            inbound,
        }
    }
}

#[async_trait]
impl Transport for Alone {
    async fn publish(&self, _frame: Bytes) -> Result<(), TransportError> {
        Ok(())
    }

    async fn send_to(&self, node: NodeId, _frame: Bytes) -> Result<(), TransportError> {
        Err(TransportError::NoRoute(node))
    }
}
