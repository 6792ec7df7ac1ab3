//! How Raft RPCs look inside a coordinator request: a marker byte, one
//! version byte, one byte naming the RPC, then the request in postcard. A
//! reply is the postcard of the receiving Raft's `Result`, so its errors
//! arrive typed.

use bytes::{BufMut, Bytes, BytesMut};
use openraft::RaftTypeConfig;
use openraft::alias::{SnapshotMetaOf, VoteOf};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The second byte of every Raft request: bumped when the layout changes, so
/// that nodes of two versions refuse each other's messages by name. Version
/// 2 is openraft 0.10's messages (version 1 was openraft 0.9's).
pub const VERSION: u8 = 2;

/// Which Raft RPC a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    AppendEntries = 1,
    Vote = 2,
    /// A piece of a snapshot ([`SnapshotPiece`]).
    Snapshot = 3,
    PreVote = 4,
    TransferLeader = 5,
}

impl Rpc {
    fn from_byte(byte: u8) -> Option<Rpc> {
        match byte {
            1 => Some(Rpc::AppendEntries),
            2 => Some(Rpc::Vote),
            3 => Some(Rpc::Snapshot),
            4 => Some(Rpc::PreVote),
            5 => Some(Rpc::TransferLeader),
            _ => None,
        }
    }
}

/// A Raft request as it arrived.
pub enum Request<C: RaftTypeConfig> {
    AppendEntries(AppendEntriesRequest<C>),
    Vote(VoteRequest<C>),
    PreVote(VoteRequest<C>),
    Snapshot(SnapshotPiece<VoteOf<C>, SnapshotMetaOf<C>>),
    TransferLeader(TransferLeaderRequest<C>),
}

/// A piece of a snapshot: openraft hands the network a whole snapshot; it
/// travels in pieces of at most `Options::snapshot_piece` bytes, in order,
/// each answered before the next is sent, and the receiver installs it once
/// the last (`done`) piece is in.
///
/// The sender encodes one that borrows its parts (`D = &[u8]`, `V` and `M`
/// references); the same bytes decode as one that owns them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotPiece<V, M, D = Vec<u8>> {
    /// The sending leader's vote.
    pub vote: V,
    pub meta: M,
    /// Where `data` starts in the snapshot.
    pub offset: u64,
    pub data: D,
    /// Whether this is the last piece.
    pub done: bool,
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
        Rpc::PreVote => Request::PreVote(postcard::from_bytes(body).map_err(failed)?),
        Rpc::Snapshot => Request::Snapshot(postcard::from_bytes(body).map_err(failed)?),
        Rpc::TransferLeader => Request::TransferLeader(postcard::from_bytes(body).map_err(failed)?),
    })
}

pub fn encode_reply<T: Serialize>(reply: &T) -> Result<Bytes, postcard::Error> {
    postcard::to_stdvec(reply).map(Bytes::from)
}

pub fn decode_reply<T: DeserializeOwned>(payload: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(payload)
}
