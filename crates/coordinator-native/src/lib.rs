//! The `Native` carrier: TLS RPC on TCP and sealed SWIM gossip on UDP, on one
//! port, with no broker.

pub mod frame;
mod gossip;
pub mod handshake;
mod listener;
mod loopback;
mod peer;
pub mod swim;
pub mod tls;
mod transport;
mod wire;

pub use loopback::Loopback;
pub use transport::{NativeOptions, NativeTransport, connect};

/// The carrier's name in configurations and logs.
pub const NAME: &str = "Native";
/// Whether the carrier is implemented (the facade refuses it otherwise).
pub const IMPLEMENTED: bool = true;
