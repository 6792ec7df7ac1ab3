//! Fault injection between named nodes: drop, delay, duplicate, reorder,
//! partition and heal. Applied to what a node receives, so it works over any
//! carrier; the `Memory` carrier and the conformance suite use it.

use crate::api::NodeId;
use crate::envelope::peek_sender;
use crate::transport::{Inbound, InboundHandler, InboundReceiver, InboundSender};
use parking_lot::Mutex;
use rand::Rng;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a frame held back for re-ordering waits for the next one to overtake it.
const REORDER_HOLD: Duration = Duration::from_millis(5);

/// Faults on the frames from one node to another.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkFaults {
    /// Probability that a frame is lost.
    pub drop: f64,
    /// Probability that a frame arrives twice.
    pub duplicate: f64,
    /// Probability that a frame is overtaken by the next one.
    pub reorder: f64,
    /// Added latency (order is kept).
    pub delay: Duration,
}

#[derive(Default)]
struct Rules {
    everywhere: LinkFaults,
    links: HashMap<(NodeId, NodeId), LinkFaults>,
    cut: HashSet<(NodeId, NodeId)>,
}

/// Shared fault settings for a set of nodes. Change them at any time.
#[derive(Default)]
pub struct Faults {
    rules: Mutex<Rules>,
    /// Frames dropped per (from, to) link.
    dropped: Mutex<HashMap<(NodeId, NodeId), u64>>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl Faults {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Faults on every link that has no faults of its own.
    pub fn set_everywhere(&self, faults: LinkFaults) {
        self.rules.lock().everywhere = faults;
    }

    /// Faults on the frames from `from` to `to`.
    pub fn set_link(&self, from: NodeId, to: NodeId, faults: LinkFaults) {
        self.rules.lock().links.insert((from, to), faults);
    }

    /// Nothing passes between a node of `side_a` and a node of `side_b`, either way.
    pub fn partition(&self, side_a: &[NodeId], side_b: &[NodeId]) {
        let mut rules = self.rules.lock();
        for &a in side_a {
            for &b in side_b {
                rules.cut.insert((a, b));
                rules.cut.insert((b, a));
            }
        }
    }

    /// Removes every partition.
    pub fn heal(&self) {
        self.rules.lock().cut.clear();
    }

    /// Removes every fault and partition (the drop counts stay).
    pub fn clear(&self) {
        *self.rules.lock() = Rules::default();
    }

    /// Frames from `from` to `to` lost to injected faults so far.
    pub fn dropped_between(&self, from: NodeId, to: NodeId) -> u64 {
        self.dropped.lock().get(&(from, to)).copied().unwrap_or(0)
    }

    fn count_drop(&self, from: NodeId, to: NodeId) {
        *self.dropped.lock().entry((from, to)).or_default() += 1;
    }

    /// Frames lost to injected faults so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.lock().values().sum()
    }

    fn link(&self, from: NodeId, to: NodeId) -> Option<LinkFaults> {
        let rules = self.rules.lock();
        if rules.cut.contains(&(from, to)) {
            return None;
        }
        Some(
            rules
                .links
                .get(&(from, to))
                .copied()
                .unwrap_or(rules.everywhere),
        )
    }

    /// Whether `from` → `to` is cut by a partition; counts the loss if so. For
    /// carriers that apply partitions to their own traffic (gossip).
    pub fn blocks(&self, from: NodeId, to: NodeId) -> bool {
        let cut = self.rules.lock().cut.contains(&(from, to));
        if cut {
            self.count_drop(from, to);
        }
        cut
    }

    /// Puts a fault stage in front of `node`'s inbound path.
    pub fn wrap(
        self: &Arc<Self>,
        node: NodeId,
        inbound: InboundReceiver,
    ) -> (InboundReceiver, tokio::task::JoinHandle<()>) {
        let (output, receiver) = crate::transport::inbound();
        let (input, queue) = mpsc::unbounded_channel();
        let entry = Arc::new(StageEntry {
            faults: self.clone(),
            node,
            queue: input,
        });
        let handler: Arc<dyn InboundHandler> = entry.clone();
        inbound.attach(Arc::downgrade(&handler));
        let task = tokio::spawn(FaultStage::default().run(entry, queue, output));
        (receiver, task)
    }
}

/// A frame admitted by the faults: when it is due, and its chance to be overtaken.
type Admitted = (Instant, f64, Inbound);

/// Applies the faults in force when a frame is sent (drop, duplicate, delay),
/// then queues it for the fault stage's task, which releases it when due.
struct StageEntry {
    faults: Arc<Faults>,
    node: NodeId,
    queue: mpsc::UnboundedSender<Admitted>,
}

impl InboundHandler for StageEntry {
    fn handle(self: Arc<Self>, item: Inbound) {
        self.admit(item);
    }
}

impl StageEntry {
    fn admit(&self, item: Inbound) {
        let now = Instant::now();
        let Inbound::Frame(frame) = &item else {
            let _ = self.queue.send((now, 0.0, item));
            return;
        };
        // Frames that are not envelopes pass untouched: the engine must see them.
        let Some(from) = peek_sender(frame) else {
            let _ = self.queue.send((now, 0.0, item));
            return;
        };
        let Some(faults) = self.faults.link(from, self.node) else {
            self.faults.count_drop(from, self.node);
            return;
        };
        let mut rng = rand::rng();
        if faults.drop > 0.0 && rng.random_bool(faults.drop.min(1.0)) {
            self.faults.count_drop(from, self.node);
            return;
        }
        if faults.duplicate > 0.0 && rng.random_bool(faults.duplicate.min(1.0)) {
            let copy = Inbound::Frame(frame.clone());
            let _ = self.queue.send((now + faults.delay, faults.reorder, copy));
        }
        let _ = self.queue.send((now + faults.delay, faults.reorder, item));
    }
}

#[derive(Default)]
struct FaultStage {
    /// Frames waiting out their delay, in arrival order, with their reorder chance.
    delayed: VecDeque<Admitted>,
    /// A frame held back so that the next one overtakes it.
    held: Option<(Instant, Inbound)>,
}

impl FaultStage {
    async fn run(
        mut self,
        // Kept here: the carrier holds it weakly, so it lives as long as the stage.
        _entry: Arc<StageEntry>,
        mut input: mpsc::UnboundedReceiver<Admitted>,
        output: InboundSender,
    ) {
        loop {
            let next_due = self
                .delayed
                .front()
                .map(|(due, ..)| *due)
                .into_iter()
                .chain(self.held.as_ref().map(|(due, _)| *due))
                .min();
            tokio::select! {
                item = input.recv() => match item {
                    Some(admitted) => self.delayed.push_back(admitted),
                    None => return,
                },
                _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {}
            }
            if !self.release(&output) {
                return;
            }
        }
    }

    /// Hands over what is due; `false` once the node is gone.
    fn release(&mut self, output: &InboundSender) -> bool {
        let now = Instant::now();
        while self.delayed.front().is_some_and(|(due, ..)| *due <= now) {
            let (_, reorder, item) = self.delayed.pop_front().expect("checked non-empty");
            if self.held.is_none() && reorder > 0.0 && rand::rng().random_bool(reorder.min(1.0)) {
                self.held = Some((now + REORDER_HOLD, item));
                continue;
            }
            if !output.deliver(item) {
                return false;
            }
            if let Some((_, held)) = self.held.take()
                && !output.deliver(held)
            {
                return false;
            }
        }
        if self.held.as_ref().is_some_and(|(due, _)| *due <= now) {
            let (_, held) = self.held.take().expect("checked some");
            return output.deliver(held);
        }
        true
    }
}
