//! [openraft](https://docs.rs/openraft/0.9) over the coordinator: Raft
//! messages travel as coordinator requests, on whatever carrier the cluster
//! runs (Native, NATS, Redis, Redis Cluster, Kafka, Zenoh, or Memory in tests).
//!
//! * [`Network`] is openraft's `RaftNetworkFactory`: give it to `Raft::new`.
//!   Its clients send AppendEntries, Vote and InstallSnapshot as requests to
//!   the target node id (Raft node ids are coordinator node ids).
//! * [`RaftServer`] takes the coordinator's inbox and hands the requests to
//!   the local `Raft`, several at once (polled in the server's own task).
//!
//! Failures map onto openraft's errors so that it does the right thing: a
//! target that is dead, unknown, gone, or behind a carrier that is down is
//! `Unreachable` (openraft backs off, here with jittered exponential waits);
//! a request that got no reply in time is `Timeout`; an error returned by the
//! target's Raft is a `RemoteError` carrying that error, typed; an append too
//! large for the carrier's `maxMessageSize` is `PayloadTooLarge` with a hint,
//! so openraft sends fewer entries at once. Snapshot chunks are cut into
//! pieces ([`Options::snapshot_piece`]), so they always fit and heartbeats do
//! not wait long behind them.
//!
//! openraft 0.9 is used: it is the current stable line (0.10 has been in
//! alpha through dozens of releases, with its API still moving). The
//! `storage-v2` feature gives the log store and state machine split used by
//! the example, and `serde` the message encodings.
//!
//! ```no_run
//! use coordinator_core::Coordinator;
//! use coordinator_openraft::{Network, RaftServer};
//! use openraft::storage::{RaftLogStorage, RaftStateMachine};
//! use openraft::{Raft, RaftTypeConfig};
//! use std::io::Cursor;
//! use std::sync::Arc;
//!
//! async fn start<C>(
//!     coordinator: Arc<dyn Coordinator>,
//!     log: impl RaftLogStorage<C>,
//!     state_machine: impl RaftStateMachine<C>,
//! ) -> Result<(Raft<C>, RaftServer), Box<dyn std::error::Error>>
//! where
//!     C: RaftTypeConfig<NodeId = u64, SnapshotData = Cursor<Vec<u8>>>,
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
pub use server::RaftServer;
