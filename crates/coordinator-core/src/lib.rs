//! The core of the coordinator: the API every carrier offers, the
//! configuration, and the cluster engine that carriers plug into.
//!
//! * [`Coordinator`]: broadcast, subscribe, members, send, request, inbox, leave.
//! * [`CoordinatorConfig`]: the `@type`-tagged configuration.
//! * [`Node`]: the engine over any [`Transport`]; [`MemoryNetwork`] runs many
//!   nodes in one process, with [`Faults`] between them.

pub mod api;
pub mod config;
pub mod engine;
pub mod envelope;
pub mod error;
pub mod faults;
pub mod membership;
pub mod memory;
pub mod routes;
pub mod sequence;
pub mod stats;
pub mod transport;

pub use api::*;
pub use config::{
    CarrierConfig, ClusterConfig, ConfigErrors, CoordinatorConfig, FieldError, Secret,
};
pub use engine::{Node, NodeBuilder, Settings, new_incarnation};
pub use error::{Error, TransportError};
pub use faults::{Faults, LinkFaults};
pub use memory::MemoryNetwork;
pub use stats::StatsSnapshot;
pub use transport::{
    Inbound, InboundHandler, InboundReceiver, InboundSender, Link, Transport, inbound,
};
