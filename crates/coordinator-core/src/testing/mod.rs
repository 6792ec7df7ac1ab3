//! Tools for testing clustered code without a real network: for this
//! crate's tests and for an application's own.
//!
//! * [`MemoryNetwork`]: many nodes in one process (the `Memory` carrier),
//!   with [`Faults`] between them (drop, delay, duplicate, reorder, partition).
//! * [`simulator`]: the engine cores of many nodes over a simulated network
//!   on a virtual clock, driven from a seed through faults, with the engine's
//!   promises checked after every run.

pub mod faults;
pub mod memory;
pub mod simulator;

pub use faults::{Faults, LinkFaults};
pub use memory::MemoryNetwork;
