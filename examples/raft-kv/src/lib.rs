//! A replicated key-value store: openraft over the coordinator, on whatever
//! carrier the configuration selects.
//!
//! * [`KvNode`] runs one node: a `Raft` with an in-memory [`LogStore`] and
//!   [`StateMachine`], its network being `coordinator_openraft::Network`,
//!   and a server for the Raft requests that reach the coordinator's inbox.
//! * Writes go to the leader. A follower forwards a write to the leader it
//!   knows, as an application request on the same inbox (the Raft server
//!   passes on what is not a Raft message).
//! * Reads are local (what this node has applied).

pub mod log_store;
pub mod state_machine;

pub use log_store::LogStore;
pub use state_machine::{Fingerprint, StateMachine};

use bytes::Bytes;
use coordinator_core::{Coordinator, Incoming, NodeId};
use coordinator_openraft::{Network, RaftServer};
use openraft::error::{ClientWriteError, ForwardReason, RaftError};
use openraft::rt::WatchReceiver;
use openraft::{EmptyNode, Raft};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

openraft::declare_raft_types!(
    /// The store's Raft types: commands in, their results out, nodes named
    /// by their coordinator node id alone.
    pub KvConfig:
        D = Command,
        R = Applied,
        Node = EmptyNode,
);

/// The store's `Raft`.
pub type KvRaft = Raft<KvConfig, StateMachine>;

/// A write to the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Set { key: String, value: String },
    Delete { key: String },
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Set { key, .. } => write!(f, "set {key}"),
            Command::Delete { key } => write!(f, "delete {key}"),
        }
    }
}

/// What a write did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The value the key had before.
    pub previous: Option<String>,
}

/// Raft timings that suit every carrier, brokers included (a Kafka round
/// trip on Tansu takes about 20 ms): heartbeats every 100 ms, elections after
/// 500–1000 ms of silence, a snapshot every 500 entries.
pub fn raft_config() -> Arc<openraft::Config> {
    raft_config_with(openraft::SnapshotPolicy::LogsSinceLast(500))
}

/// [`raft_config`] with another snapshot policy. A benchmark of replication
/// takes [`openraft::SnapshotPolicy::Never`]: this store serialises its whole
/// map for each snapshot, so over thousands of writes snapshots would take
/// most of the time measured.
pub fn raft_config_with(snapshot_policy: openraft::SnapshotPolicy) -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "raft-kv".into(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        snapshot_policy,
        max_in_snapshot_log_to_keep: 100,
        ..Default::default()
    };
    Arc::new(config.validate().expect("valid Raft settings"))
}

/// A node's storage; clones share it. Keep it to restart a node "from disk".
#[derive(Clone, Default)]
pub struct Storage {
    pub log: LogStore,
    pub state: StateMachine,
}

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// No leader is known yet (an election is running).
    #[error("no leader is known yet")]
    NoLeader,
    /// The leader (or this node's Raft) refused it.
    #[error("Raft refused the write: {0}")]
    Raft(String),
    /// The leader could not be reached.
    #[error("cannot reach the leader: {0}")]
    Forward(coordinator_core::Error),
}

/// Waits until all of `rafts` name the same leader, other than `not`; `None`
/// if one of them stops meanwhile.
pub async fn agreed_leader<'a>(
    rafts: impl IntoIterator<Item = &'a KvRaft>,
    not: Option<NodeId>,
) -> Option<NodeId> {
    let mut views: Vec<_> = rafts.into_iter().map(|raft| raft.metrics()).collect();
    loop {
        let leaders: Vec<_> = views
            .iter_mut()
            .map(|view| view.borrow_and_update().current_leader)
            .collect();
        if leaders[0].is_some() && leaders[0] != not && leaders.iter().all(|l| *l == leaders[0]) {
            return leaders[0];
        }
        let changes = views.iter_mut().map(|view| Box::pin(view.changed()));
        let (changed, _, _) = futures_util::future::select_all(changes).await;
        changed.ok()?;
    }
}

/// How long a write waits at most for a leader whose lease has lapsed (one
/// just elected) to take writes again.
pub const LEASE_WAIT: Duration = Duration::from_secs(2);

/// Marks a forwarded write apart from Raft's own requests on the inbox.
const FORWARD: u8 = b'K';

/// One running node of the store.
pub struct KvNode {
    coordinator: Arc<dyn Coordinator>,
    raft: KvRaft,
    storage: Storage,
    _server: RaftServer,
    forwarded: JoinHandle<()>,
}

impl KvNode {
    /// Starts Raft on this coordinator with `storage` (fresh, or kept from a
    /// previous run of the same node id).
    pub async fn start(
        coordinator: Arc<dyn Coordinator>,
        config: Arc<openraft::Config>,
        storage: Storage,
    ) -> anyhow::Result<KvNode> {
        let raft = Raft::new(
            coordinator.node_id(),
            config,
            Network::new(coordinator.clone()),
            storage.log.clone(),
            storage.state.clone(),
        )
        .await?;
        let (others, mut forwarded_rx) = mpsc::channel::<Incoming>(1024);
        let server = RaftServer::start_sharing(raft.clone(), coordinator.inbox()?, Some(others));
        let leader_raft = raft.clone();
        let forwarded = tokio::spawn(async move {
            while let Some(incoming) = forwarded_rx.recv().await {
                let raft = leader_raft.clone();
                tokio::spawn(serve_forwarded(raft, incoming));
            }
        });
        Ok(KvNode {
            coordinator,
            raft,
            storage,
            _server: server,
            forwarded,
        })
    }

    /// Makes `members` the cluster (call on one node, once; later calls on
    /// an initialized node are refused by Raft and ignored here).
    pub async fn initialize(&self, members: &[NodeId]) -> anyhow::Result<()> {
        let members: BTreeSet<NodeId> = members.iter().copied().collect();
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    pub fn id(&self) -> NodeId {
        self.coordinator.node_id()
    }

    pub fn raft(&self) -> &KvRaft {
        &self.raft
    }

    pub fn coordinator(&self) -> &Arc<dyn Coordinator> {
        &self.coordinator
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// What this node has applied for `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.storage.state.get(key)
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.storage.state.fingerprint()
    }

    /// Writes through the leader: here if this node leads, else forwarded.
    ///
    /// A leader takes writes only while a quorum has answered it within its
    /// lease (openraft 0.10): one just elected, or one whose followers were
    /// silent for a moment, refuses them until the next answers. Such a
    /// write is tried again for up to [`LEASE_WAIT`].
    pub async fn write(&self, command: Command) -> Result<Applied, WriteError> {
        match write_within_lease(&self.raft, command.clone()).await {
            Ok(applied) => Ok(applied),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                match forward.leader_id {
                    Some(leader) if leader != self.id() => self.forward(leader, command).await,
                    _ => Err(WriteError::NoLeader),
                }
            }
            Err(error) => Err(WriteError::Raft(error.to_string())),
        }
    }

    pub async fn set(
        &self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Applied, WriteError> {
        self.write(Command::Set {
            key: key.into(),
            value: value.into(),
        })
        .await
    }

    async fn forward(&self, leader: NodeId, command: Command) -> Result<Applied, WriteError> {
        let mut payload = vec![FORWARD];
        payload.extend(postcard::to_stdvec(&command).expect("a command encodes"));
        let reply = self
            .coordinator
            .request(leader, Bytes::from(payload), Duration::from_secs(5))
            .await
            .map_err(|error| match error {
                coordinator_core::Error::Remote { message, .. } => WriteError::Raft(message),
                error => WriteError::Forward(error),
            })?;
        postcard::from_bytes(&reply)
            .map_err(|error| WriteError::Raft(format!("bad reply: {error}")))
    }

    /// Stops Raft (the coordinator is the caller's).
    pub async fn stop(self) {
        self.forwarded.abort();
        let _ = self.raft.shutdown().await;
    }
}

/// A write on `raft`; one refused because the leader's lease has lapsed is
/// tried again each time a follower's answer renews it (Raft's metrics
/// change), for up to [`LEASE_WAIT`].
pub async fn write_within_lease(
    raft: &KvRaft,
    command: Command,
) -> Result<Applied, RaftError<KvConfig, ClientWriteError<KvConfig>>> {
    let deadline = tokio::time::Instant::now() + LEASE_WAIT;
    let mut metrics = raft.metrics();
    loop {
        // What changes from here on is news: an answer that came after the
        // write was refused.
        metrics.borrow_and_update();
        match raft.client_write(command.clone()).await {
            Ok(response) => return Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))
                if forward.reason == ForwardReason::LeaseExpired =>
            {
                match tokio::time::timeout_at(deadline, metrics.changed()).await {
                    Ok(Ok(())) => {}
                    // No answer in time, or Raft stopped: refused as it is.
                    _ => {
                        return Err(RaftError::APIError(ClientWriteError::ForwardToLeader(
                            forward,
                        )));
                    }
                }
            }
            Err(error) => return Err(error),
        }
    }
}

/// A write another node forwarded: applied here if this node leads.
async fn serve_forwarded(raft: KvRaft, incoming: Incoming) {
    let command = match incoming.payload.split_first() {
        Some((&FORWARD, body)) => postcard::from_bytes::<Command>(body).ok(),
        _ => None,
    };
    let Some(command) = command else {
        let _ = incoming.reply_error("not a raft-kv message").await;
        return;
    };
    match write_within_lease(&raft, command).await {
        Ok(applied) => {
            let reply = postcard::to_stdvec(&applied).expect("a result encodes");
            let _ = incoming.reply(Bytes::from(reply)).await;
        }
        Err(error) => {
            let _ = incoming.reply_error(error.to_string()).await;
        }
    }
}
