//! [openraft](https://docs.rs/openraft/0.10.0-alpha.37) over the
//! coordinator: Raft messages travel as coordinator requests, on whatever
//! carrier the cluster runs (Native, NATS, Redis, Redis Cluster, Kafka,
//! Zenoh, or Memory in tests).
//!
//! * [`Network`] is openraft's `RaftNetworkFactory`: give it to `Raft::new`.
//!   Its clients send AppendEntries, Vote, PreVote, TransferLeader and
//!   snapshots as requests to the target node id (Raft node ids are
//!   coordinator node ids).
//! * Appends are pipelined: up to [`Options::pipeline`] go out to a target
//!   before the first is answered, so that a new entry does not wait a round
//!   trip behind the append that tells the follower the previous entry's
//!   commit. An append of only a commit index waits while another is under
//!   way, and goes inside the next append if one comes meanwhile. On the
//!   receiving side the appends of one leader are handled one after the
//!   other, in the order they arrived.
//! * [`RaftServer`] takes the coordinator's inbox and hands the requests to
//!   the local `Raft`, several at once (polled in the server's own task).
//!
//! Failures map onto openraft's errors so that it does the right thing: a
//! target that is dead, unknown, gone, behind a carrier that is down, or
//! whose Raft has stopped is `Unreachable` (openraft backs off, here with
//! jittered exponential waits); a request that got no reply in time is
//! `Timeout`. An append too large for the carrier's `maxMessageSize` goes as
//! its first entries, as many as fit, and is answered as a partial success:
//! openraft sends the rest next. A snapshot travels in pieces
//! ([`Options::snapshot_piece`]), so it always fits and heartbeats do not
//! wait long behind it; the receiver installs it once the last piece is in.
//!
//! openraft 0.10 is used (`0.10.0-alpha.37`, pinned): its replication keeps
//! several appends under way, which 0.9's does not (there, each write waits
//! for the append that carries the previous write's commit, two round trips
//! per write). The pin is exact because 0.10's API still moves between
//! alphas. The state machine's snapshots are bytes in memory
//! ([`SnapshotData`]).
//!
//! ```no_run
//! use coordinator_core::Coordinator;
//! use coordinator_openraft::{Network, RaftServer, SnapshotData};
//! use openraft::storage::{RaftLogStorage, RaftStateMachine};
//! use openraft::{Raft, RaftTypeConfig};
//! use std::sync::Arc;
//!
//! async fn start<C, SM>(
//!     coordinator: Arc<dyn Coordinator>,
//!     log: impl RaftLogStorage<C>,
//!     state_machine: SM,
//! ) -> Result<(Raft<C, SM>, RaftServer), Box<dyn std::error::Error>>
//! where
//!     C: RaftTypeConfig<NodeId = u64>,
//!     SM: RaftStateMachine<C, SnapshotData = SnapshotData>,
//! {
//!     let config = Arc::new(openraft::Config::default().validate()?);
//!     let network = Network::new(coordinator.clone());
//!     let raft = Raft::new(coordinator.node_id(), config, network, log, state_machine).await?;
//!     let server = RaftServer::start(raft.clone(), coordinator.inbox()?);
//!     Ok((raft, server))
//! }
//! ```

mod network;
mod server;
pub mod wire;

pub use network::{Client, Network, Options};
pub use server::{RaftServer, SnapshotData};
