//! The receiving side: Raft requests from the coordinator's inbox, handed to
//! the local `Raft`, their results sent back as replies.

use crate::wire::{self, DecodeError, Request, SnapshotPiece};
use coordinator_core::{Inbox, Incoming, NodeId};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use openraft::alias::{SnapshotMetaOf, VoteOf};
use openraft::error::Fatal;
use openraft::raft::{AppendEntriesRequest, SnapshotResponse};
use openraft::storage::RaftStateMachine;
use openraft::{Raft, RaftTypeConfig, Snapshot};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Raft requests handled at once, at most, by default: beyond it the server
/// stops reading its inbox until one is done (the inbox then fills and its
/// overflow is reported), instead of taking requests without bound.
pub const MAX_CONCURRENT_REQUESTS: usize = 64;

/// Serves the Raft requests that reach this node until dropped (or until the
/// coordinator stops).
///
/// Requests are handled concurrently (in the server's task), so that a vote
/// or a heartbeat never waits behind a large append or a snapshot piece that
/// the local Raft is still writing; at most [`MAX_CONCURRENT_REQUESTS`] at
/// once. The appends of one leader are handled one after the other, in the
/// order they arrived: a leader sends the next before the answer to the
/// previous is in, and each continues the log where the previous one ends.
/// A snapshot arrives in pieces; it is installed once the last is in.
/// Dropping the server ends them all.
pub struct RaftServer {
    task: JoinHandle<()>,
}

/// The snapshot data this network carries: the state machine's snapshot as
/// bytes in memory.
pub type SnapshotData = Cursor<Vec<u8>>;

impl RaftServer {
    /// Serves `raft` from `inbox`. A message that is not a Raft request gets
    /// an error reply (or is dropped if it was one-way).
    pub fn start<C, SM>(raft: Raft<C, SM>, inbox: Inbox) -> RaftServer
    where
        C: RaftTypeConfig<NodeId = NodeId>,
        SM: RaftStateMachine<C, SnapshotData = SnapshotData>,
    {
        Self::start_sharing(raft, inbox, None)
    }

    /// As [`RaftServer::start`], but messages that are not Raft requests go
    /// to `others`, so the application can use the same inbox for its own
    /// direct messages.
    pub fn start_sharing<C, SM>(
        raft: Raft<C, SM>,
        inbox: Inbox,
        others: Option<mpsc::Sender<Incoming>>,
    ) -> RaftServer
    where
        C: RaftTypeConfig<NodeId = NodeId>,
        SM: RaftStateMachine<C, SnapshotData = SnapshotData>,
    {
        Self::serve(raft, inbox, others, MAX_CONCURRENT_REQUESTS)
    }

    /// As [`RaftServer::start_sharing`], with at most `concurrency` requests
    /// handled (or waiting behind an append from the same node) at once.
    pub fn serve<C, SM>(
        raft: Raft<C, SM>,
        mut inbox: Inbox,
        others: Option<mpsc::Sender<Incoming>>,
        concurrency: usize,
    ) -> RaftServer
    where
        C: RaftTypeConfig<NodeId = NodeId>,
        SM: RaftStateMachine<C, SnapshotData = SnapshotData>,
    {
        let concurrency = concurrency.max(1);
        let task = tokio::spawn(async move {
            // The requests under way, polled by this task: handing each to a
            // task of its own cost a spawn and a wake-up per message, on the
            // path of every append. Owned here: dropping the server (aborting
            // this task) ends them.
            let mut handling = FuturesUnordered::new();
            // Per node with an append under way, its appends that wait for
            // it, in arrival order.
            let mut appends: HashMap<NodeId, VecDeque<(Incoming, AppendEntriesRequest<C>)>> =
                HashMap::new();
            let mut waiting = 0usize;
            let snapshots = Snapshots::default();
            loop {
                let incoming = tokio::select! {
                    biased;
                    Some(finished) = handling.next(), if !handling.is_empty() => {
                        // An append done: the next one from the same node.
                        let Some(from) = finished else { continue };
                        let next = appends.get_mut(&from).and_then(VecDeque::pop_front);
                        match next {
                            Some((incoming, request)) => {
                                waiting -= 1;
                                handling.push(handle(
                                    raft.clone(),
                                    incoming,
                                    Request::AppendEntries(request),
                                    snapshots.clone(),
                                ));
                            }
                            None => {
                                appends.remove(&from);
                            }
                        }
                        continue;
                    }
                    incoming = inbox.recv(), if handling.len() + waiting < concurrency => incoming,
                };
                let Some(incoming) = incoming else { break };
                match (wire::decode_request::<C>(&incoming.payload), &others) {
                    (Ok(Request::AppendEntries(request)), _) => {
                        match appends.get_mut(&incoming.from) {
                            Some(queue) => {
                                queue.push_back((incoming, request));
                                waiting += 1;
                            }
                            None => {
                                appends.insert(incoming.from, VecDeque::new());
                                handling.push(handle(
                                    raft.clone(),
                                    incoming,
                                    Request::AppendEntries(request),
                                    snapshots.clone(),
                                ));
                            }
                        }
                    }
                    (Ok(request), _) => {
                        handling.push(handle(raft.clone(), incoming, request, snapshots.clone()))
                    }
                    (Err(DecodeError::NotRaft), Some(others)) => {
                        if others.send(incoming).await.is_err() {
                            tracing::debug!("nobody takes the application's messages any more");
                        }
                    }
                    (Err(error), _) => refuse(incoming, error).await,
                }
            }
            tracing::debug!("inbox closed: Raft server stops");
        });
        RaftServer { task }
    }

    /// Whether it still serves (the coordinator has not stopped).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

impl Drop for RaftServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The snapshots arriving, one per sending node: the bytes received so far.
/// A new snapshot from a node (a piece at offset 0) replaces the one it was
/// sending. A snapshot is named by its sender's vote and its metadata.
struct Snapshots<V, M> {
    arriving: Arc<Mutex<HashMap<NodeId, Arriving<V, M>>>>,
}

impl<V, M> Clone for Snapshots<V, M> {
    fn clone(&self) -> Self {
        Self {
            arriving: self.arriving.clone(),
        }
    }
}

impl<V, M> Default for Snapshots<V, M> {
    fn default() -> Self {
        Self {
            arriving: Arc::default(),
        }
    }
}

struct Arriving<V, M> {
    vote: V,
    meta: M,
    data: Vec<u8>,
}

impl<V: PartialEq + std::fmt::Display, M: PartialEq + std::fmt::Display> Snapshots<V, M> {
    /// Adds a piece; the whole snapshot when it was the last one.
    fn add(
        &self,
        from: NodeId,
        piece: SnapshotPiece<V, M>,
    ) -> Result<Option<Arriving<V, M>>, String> {
        let mut arriving = self
            .arriving
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let SnapshotPiece {
            vote,
            meta,
            offset,
            data,
            done,
        } = piece;
        let current = match (offset, arriving.entry(from)) {
            (0, entry) => entry
                .insert_entry(Arriving {
                    vote,
                    meta,
                    data: Vec::new(),
                })
                .into_mut(),
            (_, Entry::Vacant(_)) => {
                return Err(format!(
                    "a piece at {offset} of snapshot {meta} without its beginning"
                ));
            }
            (_, Entry::Occupied(current)) => {
                let expected = current.get();
                if expected.vote != vote
                    || expected.meta != meta
                    || expected.data.len() as u64 != offset
                {
                    let error = format!(
                        "a piece at {offset} of snapshot {meta} from {vote}; expected one at {} of snapshot {} from {}",
                        expected.data.len(),
                        expected.meta,
                        expected.vote
                    );
                    current.remove();
                    return Err(error);
                }
                current.into_mut()
            }
        };
        current.data.extend_from_slice(&data);
        if !done {
            return Ok(None);
        }
        Ok(arriving.remove(&from))
    }
}

async fn refuse(incoming: Incoming, error: DecodeError) {
    let from = incoming.from;
    tracing::warn!(from, %error, "refused a message on the Raft inbox");
    if incoming.is_request() {
        let _ = incoming.reply_error(error.to_string()).await;
    }
}

/// Handles one request; the node it came from if it was an append.
async fn handle<C, SM>(
    raft: Raft<C, SM>,
    incoming: Incoming,
    request: Request<C>,
    snapshots: Snapshots<VoteOf<C>, SnapshotMetaOf<C>>,
) -> Option<NodeId>
where
    C: RaftTypeConfig<NodeId = NodeId>,
    SM: RaftStateMachine<C, SnapshotData = SnapshotData>,
{
    let from = incoming.from;
    let mut appended = None;
    let reply = match request {
        Request::AppendEntries(request) => {
            appended = Some(from);
            wire::encode_reply(&raft.append_entries(request).await)
        }
        Request::Vote(request) => wire::encode_reply(&raft.vote(request).await),
        Request::PreVote(request) => wire::encode_reply(&raft.pre_vote(request).await),
        Request::TransferLeader(request) => {
            wire::encode_reply(&raft.handle_transfer_leader(request).await)
        }
        Request::Snapshot(piece) => match snapshots.add(from, piece) {
            Ok(None) => wire::encode_reply(&Ok::<Option<SnapshotResponse<C>>, Fatal<C>>(None)),
            Ok(Some(whole)) => {
                let snapshot = Snapshot {
                    meta: whole.meta,
                    snapshot: Cursor::new(whole.data),
                };
                let installed = raft.install_full_snapshot(whole.vote, snapshot).await;
                wire::encode_reply(&installed.map(Some))
            }
            Err(error) => {
                tracing::warn!(from, %error, "snapshot piece refused");
                if incoming.is_request() {
                    let _ = incoming.reply_error(error).await;
                }
                return appended;
            }
        },
    };
    if !incoming.is_request() {
        tracing::debug!(from, "a one-way Raft message: its result is not sent");
        return appended;
    }
    let sent = match reply {
        Ok(reply) => incoming.reply(reply).await,
        Err(error) => {
            incoming
                .reply_error(format!("cannot encode the Raft reply: {error}"))
                .await
        }
    };
    if let Err(error) = sent {
        tracing::debug!(from, %error, "Raft reply not sent");
    }
    appended
}
