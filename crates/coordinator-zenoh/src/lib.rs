//! The `Zenoh` carrier of the coordinator.
//!
//! Not implemented yet (tracked by issue #5): until it lands, starting a
//! coordinator with `"@type": "Zenoh"` fails with an error that says so. The
//! configuration of this carrier is already parsed and validated by
//! `coordinator-core`.

/// The `@type` name of this carrier.
pub const NAME: &str = "Zenoh";

/// Whether this build can run the carrier.
pub const IMPLEMENTED: bool = false;
