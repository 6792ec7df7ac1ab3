//! The receiving side: Raft requests from the coordinator's inbox, handed to
//! the local `Raft`, their results sent back as replies.

use crate::wire::{self, DecodeError, Request};
use coordinator_core::{Inbox, Incoming, NodeId};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use openraft::{Raft, RaftTypeConfig};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Raft requests handled at once, at most, by default: beyond it the server
/// stops reading its inbox until one is done (the inbox then fills and its
/// overflow is reported), instead of starting tasks without bound.
pub const MAX_CONCURRENT_REQUESTS: usize = 64;

/// Serves the Raft requests that reach this node until dropped (or until the
/// coordinator stops).
///
/// Requests are handled concurrently (in the server's task), so that a vote
/// or a heartbeat never waits behind a large append or a snapshot piece that
/// the local Raft is still writing; at most [`MAX_CONCURRENT_REQUESTS`] at
/// once.
/// Dropping the server ends them all.
pub struct RaftServer {
    task: JoinHandle<()>,
}

impl RaftServer {
    /// Serves `raft` from `inbox`. A message that is not a Raft request gets
    /// an error reply (or is dropped if it was one-way).
    pub fn start<C>(raft: Raft<C>, inbox: Inbox) -> RaftServer
    where
        C: RaftTypeConfig<NodeId = NodeId>,
        C::SnapshotData:
            tokio::io::AsyncRead + tokio::io::AsyncWrite + tokio::io::AsyncSeek + Unpin,
    {
        Self::start_sharing(raft, inbox, None)
    }

    /// As [`RaftServer::start`], but messages that are not Raft requests go
    /// to `others`, so the application can use the same inbox for its own
    /// direct messages.
    pub fn start_sharing<C>(
        raft: Raft<C>,
        inbox: Inbox,
        others: Option<mpsc::Sender<Incoming>>,
    ) -> RaftServer
    where
        C: RaftTypeConfig<NodeId = NodeId>,
        C::SnapshotData:
            tokio::io::AsyncRead + tokio::io::AsyncWrite + tokio::io::AsyncSeek + Unpin,
    {
        Self::serve(raft, inbox, others, MAX_CONCURRENT_REQUESTS)
    }

    /// As [`RaftServer::start_sharing`], with at most `concurrency` requests
    /// handled at once.
    pub fn serve<C>(
        raft: Raft<C>,
        mut inbox: Inbox,
        others: Option<mpsc::Sender<Incoming>>,
        concurrency: usize,
    ) -> RaftServer
    where
        C: RaftTypeConfig<NodeId = NodeId>,
        C::SnapshotData:
            tokio::io::AsyncRead + tokio::io::AsyncWrite + tokio::io::AsyncSeek + Unpin,
    {
        let concurrency = concurrency.max(1);
        let task = tokio::spawn(async move {
            // The requests under way, polled by this task: handing each to a
            // task of its own cost a spawn and a wake-up per message, on the
            // path of every append. Owned here: dropping the server (aborting
            // this task) ends them.
            let mut handling = FuturesUnordered::new();
            loop {
                let incoming = tokio::select! {
                    biased;
                    Some(()) = handling.next(), if !handling.is_empty() => continue,
                    incoming = inbox.recv(), if handling.len() < concurrency => incoming,
                };
                let Some(incoming) = incoming else { break };
                match (wire::decode_request::<C>(&incoming.payload), &others) {
                    (Ok(request), _) => handling.push(handle(raft.clone(), incoming, request)),
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

async fn refuse(incoming: Incoming, error: DecodeError) {
    let from = incoming.from;
    tracing::warn!(from, %error, "refused a message on the Raft inbox");
    if incoming.is_request() {
        let _ = incoming.reply_error(error.to_string()).await;
    }
}

async fn handle<C>(raft: Raft<C>, incoming: Incoming, request: Request<C>)
where
    C: RaftTypeConfig<NodeId = NodeId>,
    C::SnapshotData: tokio::io::AsyncRead + tokio::io::AsyncWrite + tokio::io::AsyncSeek + Unpin,
{
    let from = incoming.from;
    let reply = match request {
        Request::AppendEntries(request) => wire::encode_reply(&raft.append_entries(request).await),
        Request::Vote(request) => wire::encode_reply(&raft.vote(request).await),
        Request::InstallSnapshot(request) => {
            wire::encode_reply(&raft.install_snapshot(request).await)
        }
    };
    if !incoming.is_request() {
        tracing::debug!(from, "a one-way Raft message: its result is not sent");
        return;
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
}
