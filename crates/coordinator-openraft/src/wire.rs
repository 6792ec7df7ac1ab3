//! How Raft RPCs look inside a coordinator request: one version byte, one
//! byte naming the RPC, then the request in postcard. A reply is the
//! postcard of the receiving Raft's `Result`, so its errors arrive typed.

use bytes::{BufMut, Bytes, BytesMut};
use openraft::RaftTypeConfig;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first byte of every Raft request: bumped when the layout changes, so
/// that nodes of two versions refuse each other's messages by name.
pub const VERSION: u8 = 1;

/// Which Raft RPC a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    AppendEntries = 1,
    Vote = 2,
    InstallSnapshot = 3,
}

impl Rpc {
    fn from_byte(byte: u8) -> Option<Rpc> {
        match byte {
            1 => Some(Rpc::AppendEntries),
            2 => Some(Rpc::Vote),
            3 => Some(Rpc::InstallSnapshot),
            _ => None,
        }
    }
}

/// A Raft request as it arrived.
pub enum Request<C: RaftTypeConfig> {
    AppendEntries(AppendEntriesRequest<C>),
    Vote(VoteRequest<C::NodeId>),
    InstallSnapshot(InstallSnapshotRequest<C>),
}

/// Why bytes from the inbox are not a Raft request.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not one of ours at all (another service's message on the same inbox).
    NotRaft,
    /// Ours, but of another layout version.
    Version(u8),
    /// Ours, but naming an RPC this node does not know.
    UnknownRpc(u8),
    /// Ours, but the body does not decode.
    Body { rpc: Rpc, detail: String },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::NotRaft => write!(f, "not a Raft message"),
            DecodeError::Version(v) => write!(
                f,
                "Raft message of layout version {v}, this node speaks {VERSION}"
            ),
            DecodeError::UnknownRpc(byte) => write!(f, "unknown Raft RPC {byte}"),
            DecodeError::Body { rpc, detail } => {
                write!(f, "malformed Raft {rpc:?} request: {detail}")
            }
        }
    }
}

/// Whether a payload starts like a Raft request of any version (so that an
/// application can share the inbox with other messages).
pub fn looks_like_raft(payload: &[u8]) -> bool {
    payload.len() >= 3 && payload[0] == MAGIC
}

/// Marks our requests apart from an application's own direct messages.
const MAGIC: u8 = 0xF7;

pub fn encode_request<T: Serialize>(rpc: Rpc, request: &T) -> Result<Bytes, postcard::Error> {
    let mut out = BytesMut::with_capacity(64);
    out.put_u8(MAGIC);
    out.put_u8(VERSION);
    out.put_u8(rpc as u8);
    let out = postcard::to_io(request, out.writer())?;
    Ok(out.into_inner().freeze())
}

pub fn decode_request<C: RaftTypeConfig>(payload: &[u8]) -> Result<Request<C>, DecodeError> {
    if !looks_like_raft(payload) {
        return Err(DecodeError::NotRaft);
    }
    if payload[1] != VERSION {
        return Err(DecodeError::Version(payload[1]));
    }
    let Some(rpc) = Rpc::from_byte(payload[2]) else {
        return Err(DecodeError::UnknownRpc(payload[2]));
    };
    let body = &payload[3..];
    let failed = |error: postcard::Error| DecodeError::Body {
        rpc,
        detail: error.to_string(),
    };
    Ok(match rpc {
        Rpc::AppendEntries => Request::AppendEntries(postcard::from_bytes(body).map_err(failed)?),
        Rpc::Vote => Request::Vote(postcard::from_bytes(body).map_err(failed)?),
        Rpc::InstallSnapshot => {
            Request::InstallSnapshot(postcard::from_bytes(body).map_err(failed)?)
        }
    })
}

pub fn encode_reply<T: Serialize>(reply: &T) -> Result<Bytes, postcard::Error> {
    postcard::to_stdvec(reply).map(Bytes::from)
}

pub fn decode_reply<T: DeserializeOwned>(payload: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(payload)
}
