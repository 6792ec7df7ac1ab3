//! The error type of the core crate.

use crate::api::NodeId;
use crate::config::ConfigErrors;
use std::time::Duration;

/// What a carrier reports when it cannot move bytes.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The carrier does not know where this node is.
    #[error("no route to node {0}")]
    NoRoute(NodeId),
    /// The link to the broker or peer is down; it is being re-established.
    #[error("{carrier} link down: {detail}")]
    LinkDown {
        carrier: &'static str,
        detail: String,
    },
    /// The carrier has been closed.
    #[error("{0} carrier closed")]
    Closed(&'static str),
    /// The carrier did not finish with the frame in time (a stalled link):
    /// it may still arrive.
    #[error("the carrier did not take the frame within {0:?}")]
    Stalled(Duration),
    /// Anything else the carrier reports, with its own words.
    #[error("{carrier}: {detail}")]
    Other {
        carrier: &'static str,
        detail: String,
    },
}

/// Everything that can go wrong for the application.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid configuration:\n{0}")]
    Config(#[from] ConfigErrors),
    /// A setting that parsed but cannot be used (secret missing, unknown carrier in this build…).
    #[error("cannot start: {0}")]
    Start(String),
    #[error("node {0} is not a member of the cluster")]
    UnknownNode(NodeId),
    #[error("node {0} is dead")]
    NodeDead(NodeId),
    #[error("node {0} has left the cluster")]
    NodeLeft(NodeId),
    #[error("request to node {node} timed out after {timeout:?}")]
    Timeout { node: NodeId, timeout: Duration },
    #[error("node {node} answered with an error: {message}")]
    Remote { node: NodeId, message: String },
    #[error("message of {size} bytes is larger than maxMessageSize ({max} bytes)")]
    TooLarge { size: usize, max: usize },
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: &'static str },
    /// Too many bytes already wait for the carrier to take them to this node
    /// (or, for broadcasts, to everyone): the link is slower than the sender.
    #[error("{waiting_bytes} bytes already wait to be sent to {destination}; try again later")]
    Backlog {
        destination: String,
        waiting_bytes: usize,
    },
    #[error("the inbox has already been taken")]
    InboxTaken,
    #[error("this message is not a request: there is nobody to reply to")]
    NotARequest,
    #[error("the coordinator has stopped")]
    Closed,
    #[error(transparent)]
    Transport(#[from] TransportError),
}
