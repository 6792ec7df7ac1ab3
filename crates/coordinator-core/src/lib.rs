//! The core of the coordinator: the API every carrier offers, the
//! configuration, and the cluster engine that carriers plug into.
//!
//! * [`Coordinator`]: broadcast, subscribe, members, send, request, inbox, leave
//!   (the application's side, re-exported at the root).
//! * [`CoordinatorConfig`]: the `@type`-tagged configuration.
//! * [`Node`]: the engine over any carrier; its decisions are made by the
//!   sans-IO [`engine::core::Core`].
//! * [`transport`]: what a carrier implements (the carrier's side).
//! * [`testing`]: the `Memory` carrier with fault injection, and the
//!   deterministic simulator.

pub mod api;
pub mod config;
pub mod engine;
pub mod envelope;
pub mod error;
pub mod membership;
pub mod routes;
pub mod sequence;
pub mod stats;
pub mod testing;
pub mod transport;

pub use api::*;
pub use config::{
    CarrierConfig, ClusterConfig, ConfigErrors, CoordinatorConfig, FieldError, Secret,
};
pub use engine::{Node, NodeBuilder, Settings, new_incarnation};
pub use error::{Error, TransportError};
pub use stats::StatsSnapshot;
