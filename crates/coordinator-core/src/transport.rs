//! What a carrier implements: publish to all, send to one node, and a stream
//! of what arrives for this node. The engine does everything else.

use crate::api::{DropReason, MemberState, NodeId};
use crate::error::TransportError;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::{Arc, OnceLock, Weak};
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

    /// Whether this carrier answers a request on the request's own channel
    /// (Zenoh's queries), so it must see each reply in a frame of its own.
    /// Replies then never go in a `DirectBatch`; other messages still do.
    fn replies_alone(&self) -> bool {
        false
    }

    /// Whether every frame this carrier hands over came on a link whose far
    /// end proved the cluster key, and which authenticates every byte on it
    /// (Native: TLS sessions bound to a proof of the key; never a broker,
    /// which any of its clients can write to). Envelopes then carry no seal
    /// of their own: see [`crate::envelope::Codec::on_authenticated_links`].
    /// A carrier that says so must hand over nothing that came another way.
    fn authenticates_links(&self) -> bool {
        false
    }

    /// Where the carrier reaches node `node` (this node included), if it knows.
    fn address_of(&self, _node: NodeId) -> Option<String> {
        None
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
    pub inbound: InboundReceiver,
}

/// Items a carrier can hand over before its node has started; later ones are
/// dropped (a gap is reported for lost frames).
pub const WAITING: usize = 65_536;

/// Whatever takes what a carrier hands over: the engine, or a test's fault stage.
pub trait InboundHandler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, item: Inbound);
}

/// A new inbound path: the carrier keeps the sender (cloned as it likes) and
/// puts the receiver in its [`Link`].
pub fn inbound() -> (InboundSender, InboundReceiver) {
    let (queue, waiting) = mpsc::channel(WAITING);
    let shared = Arc::new(Shared {
        handler: OnceLock::new(),
        gate: Mutex::new(Some(queue)),
    });
    (
        InboundSender {
            shared: shared.clone(),
        },
        InboundReceiver { shared, waiting },
    )
}

struct Shared {
    /// Set once the node runs; weak, so that a carrier never keeps its node alive.
    handler: OnceLock<Weak<dyn InboundHandler>>,
    /// Where items wait until then (`None` once the handler is set).
    gate: Mutex<Option<mpsc::Sender<Inbound>>>,
}

/// The carrier's end of a node's inbound path.
///
/// Once the node runs, [`InboundSender::deliver`] processes the item in the
/// caller's task (decode, verify, order, dispatch to subscriptions), so that a
/// frame costs no hop between tasks. Before that, items wait in order and the
/// node takes them first when it starts.
#[derive(Clone)]
pub struct InboundSender {
    shared: Arc<Shared>,
}

impl InboundSender {
    /// Hands over one item. Returns `false` once nobody takes items any more
    /// (the node is gone): the carrier can stop reading.
    pub fn deliver(&self, item: Inbound) -> bool {
        if let Some(handler) = self.shared.handler.get() {
            return match handler.upgrade() {
                Some(handler) => {
                    handler.handle(item);
                    true
                }
                None => false,
            };
        }
        let gate = self.shared.gate.lock();
        match gate.as_ref() {
            Some(queue) => {
                let open = !queue.is_closed();
                // Full before the node even started: this one is lost.
                let _ = queue.try_send(item);
                open
            }
            None => {
                // The node started meanwhile.
                drop(gate);
                self.deliver(item)
            }
        }
    }

    /// Whether nobody takes items any more.
    pub fn is_closed(&self) -> bool {
        match self.shared.handler.get() {
            Some(handler) => handler.strong_count() == 0,
            None => self
                .shared
                .gate
                .lock()
                .as_ref()
                .is_none_or(|q| q.is_closed()),
        }
    }

    /// Whether both are ends of the same path.
    pub fn same_path(&self, other: &InboundSender) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl std::fmt::Debug for InboundSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundSender")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The node's end of an inbound path.
pub struct InboundReceiver {
    shared: Arc<Shared>,
    waiting: mpsc::Receiver<Inbound>,
}

impl InboundReceiver {
    /// From now on items go to `handler`, starting with those that waited.
    pub fn attach(self, handler: Weak<dyn InboundHandler>) {
        let InboundReceiver {
            shared,
            mut waiting,
        } = self;
        let mut gate = shared.gate.lock();
        while let Ok(item) = waiting.try_recv() {
            if let Some(handler) = handler.upgrade() {
                handler.handle(item);
            }
        }
        let _ = shared.handler.set(handler);
        *gate = None;
    }

    /// The next item, for a reader that is not a node (a test watching the
    /// raw frames of a carrier).
    pub async fn recv(&mut self) -> Option<Inbound> {
        self.waiting.recv().await
    }
}

/// The carrier of a single node (`Disabled`): nobody else to talk to.
pub(crate) struct Alone {
    // Kept so the inbound path stays open for as long as the node runs.
    _keep_open: InboundSender,
}

impl Alone {
    pub fn link() -> Link {
        let (sender, inbound) = inbound();
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
