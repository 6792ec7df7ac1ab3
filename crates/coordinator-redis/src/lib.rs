//! The `Redis` and `RedisCluster` carriers of the coordinator.
//!
//! Not implemented yet (tracked by issue #4): until it lands, starting a
//! coordinator with `"@type": "Redis"` fails with an error that says so. The
//! configuration of this carrier is already parsed and validated by
//! `coordinator-core`.

/// The `@type` name of this carrier.
pub const NAME: &str = "Redis";

/// Whether this build can run the carrier.
pub const IMPLEMENTED: bool = false;
