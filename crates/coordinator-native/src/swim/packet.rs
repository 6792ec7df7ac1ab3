//! Gossip packets: what they carry and how they are sealed (see `docs/PROTOCOL.md`).
//!
//! ```text
//! datagram   magic 0xC0 0x55 | version 1 | nonce 24 | sealed body + tag 16
//! body       counter u64 | from u64 | run u64 | n u8 | message* | m u8 | update*
//! message    1 Ping    seq u32 | target u64
//!            2 Ack     seq u32
//!            3 PingReq seq u32 | target u64 | addr
//!            4 Nack    seq u32
//! update     id u64 | run u64 | version u32 | state u8 | [by u64] | addr
//!            (`by`, the node whose verdict it is, only for suspect and dead)
//! addr       4 | ipv4 4 | port u16   or   6 | ipv6 16 | port u16
//! ```
//!
//! The body is sealed with XChaCha20-Poly1305 under a key derived from the
//! cluster key; the 3 header bytes are authenticated with it. Each sender
//! numbers its datagrams; a receiver keeps, per sender run, the highest
//! counter seen and a 64-wide window below it, and drops any datagram it has
//! seen before or that is older than the window.

use crate::wire::{Reader, addr_len, encode_addr};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use coordinator_core::{MemberState, NodeId};
use rand::RngCore;
use std::collections::HashMap;
use std::net::SocketAddr;

const MAGIC: [u8; 2] = [0xC0, 0x55];
const VERSION: u8 = 2;
const HEADER_LEN: usize = 3;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Largest datagram sent (fits a 1500-byte MTU with room for tunnels).
pub const MAX_DATAGRAM: usize = 1400;
/// Room for a packet's body ([`Packet::encoded_len`]) inside one datagram.
pub const MAX_PACKET: usize = MAX_DATAGRAM - HEADER_LEN - NONCE_LEN - TAG_LEN - 8;
/// How far behind the newest counter a datagram may arrive.
const REPLAY_WINDOW: u64 = 64;

/// A member's state as gossiped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Alive = 0,
    Suspect = 1,
    Dead = 2,
    Left = 3,
}

impl State {
    pub fn is_live(self) -> bool {
        matches!(self, State::Alive | State::Suspect)
    }

    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Dead,
            3 => State::Left,
            _ => return None,
        })
    }
}

impl From<State> for MemberState {
    fn from(state: State) -> Self {
        match state {
            State::Alive => MemberState::Alive,
            State::Suspect => MemberState::Suspect,
            State::Dead => MemberState::Dead,
            State::Left => MemberState::Left,
        }
    }
}

/// News about one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub id: NodeId,
    /// The member's run (engine incarnation): a restart starts a new one.
    pub run: u64,
    /// Raised by the member to refute suspicion within a run.
    pub version: u32,
    pub state: State,
    /// Whose verdict a suspicion or death is (for alive and left: the member
    /// itself). Distinct suspecters shorten a suspicion.
    pub by: NodeId,
    /// Where the member listens (TCP and UDP).
    pub addr: SocketAddr,
}

impl Update {
    /// News that `id` is alive (or has left) at `version`, from itself.
    pub fn own(id: NodeId, run: u64, version: u32, state: State, addr: SocketAddr) -> Self {
        Update {
            id,
            run,
            version,
            state,
            by: id,
            addr,
        }
    }

    fn carries_by(&self) -> bool {
        matches!(self.state, State::Suspect | State::Dead)
    }

    pub fn encoded_len(&self) -> usize {
        8 + 8 + 4 + 1 + if self.carries_by() { 8 } else { 0 } + addr_len(&self.addr)
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.run.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.push(self.state as u8);
        if self.carries_by() {
            out.extend_from_slice(&self.by.to_be_bytes());
        }
        encode_addr(&self.addr, out);
    }

    pub(crate) fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let id = reader.u64()?;
        let run = reader.u64()?;
        let version = reader.u32()?;
        let state = State::from_byte(reader.u8()?).ok_or(DecodeError::Malformed("member state"))?;
        let mut update = Update::own(id, run, version, state, ([0, 0, 0, 0], 0).into());
        if update.carries_by() {
            update.by = reader.u64()?;
        }
        update.addr = reader.addr()?;
        Ok(update)
    }
}

/// A protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// "Are you alive?" to `target` (which must be the receiver).
    Ping { seq: u32, target: NodeId },
    /// "Yes", in answer to ping `seq`.
    Ack { seq: u32 },
    /// "Ping `target` at `addr` for me and forward its ack."
    PingReq {
        seq: u32,
        target: NodeId,
        addr: SocketAddr,
    },
    /// "I pinged the target of your PingReq `seq` and heard nothing": the
    /// helper is reachable, so the failure is not the requester's own.
    Nack { seq: u32 },
}

impl Message {
    fn encoded_len(&self) -> usize {
        match self {
            Message::Ping { .. } => 1 + 4 + 8,
            Message::Ack { .. } | Message::Nack { .. } => 1 + 4,
            Message::PingReq { addr, .. } => 1 + 4 + 8 + addr_len(addr),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Ping { seq, target } => {
                out.push(1);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&target.to_be_bytes());
            }
            Message::Ack { seq } => {
                out.push(2);
                out.extend_from_slice(&seq.to_be_bytes());
            }
            Message::PingReq { seq, target, addr } => {
                out.push(3);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&target.to_be_bytes());
                encode_addr(addr, out);
            }
            Message::Nack { seq } => {
                out.push(4);
                out.extend_from_slice(&seq.to_be_bytes());
            }
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match reader.u8()? {
            1 => Message::Ping {
                seq: reader.u32()?,
                target: reader.u64()?,
            },
            2 => Message::Ack { seq: reader.u32()? },
            3 => Message::PingReq {
                seq: reader.u32()?,
                target: reader.u64()?,
                addr: reader.addr()?,
            },
            4 => Message::Nack { seq: reader.u32()? },
            _ => return Err(DecodeError::Malformed("message type")),
        })
    }
}

/// One gossip datagram's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub from: NodeId,
    pub run: u64,
    pub messages: Vec<Message>,
    pub updates: Vec<Update>,
}

impl Packet {
    /// Size of the body without the counter.
    pub fn encoded_len(&self) -> usize {
        8 + 8
            + 1
            + self
                .messages
                .iter()
                .map(Message::encoded_len)
                .sum::<usize>()
            + 1
            + self.updates.iter().map(Update::encoded_len).sum::<usize>()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.from.to_be_bytes());
        out.extend_from_slice(&self.run.to_be_bytes());
        out.push(self.messages.len() as u8);
        for message in &self.messages {
            message.encode(out);
        }
        out.push(self.updates.len() as u8);
        for update in &self.updates {
            update.encode(out);
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let from = reader.u64()?;
        let run = reader.u64()?;
        let messages = (0..reader.u8()?)
            .map(|_| Message::decode(reader))
            .collect::<Result<_, _>>()?;
        let updates = (0..reader.u8()?)
            .map(|_| Update::decode(reader))
            .collect::<Result<_, _>>()?;
        Ok(Packet {
            from,
            run,
            messages,
            updates,
        })
    }
}

/// Encodes a datagram's body (what [`GossipCodec::seal`] seals).
pub fn encode_body(counter: u64, packet: &Packet) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + packet.encoded_len());
    put_body(&mut out, counter, packet);
    out
}

fn put_body(out: &mut Vec<u8>, counter: u64, packet: &Packet) {
    out.extend_from_slice(&counter.to_be_bytes());
    packet.encode(out);
}

/// Decodes a datagram's body once it is authenticated: its counter and its
/// packet (what a sender with the cluster key controls).
pub fn decode_body(body: &[u8]) -> Result<(u64, Packet), DecodeError> {
    let mut reader = Reader::new(body);
    let counter = reader.u64()?;
    let packet = Packet::decode(&mut reader)?;
    reader.finish()?;
    Ok((counter, packet))
}

/// Encodes a full state for a TCP sync frame: `count u16 | update*`.
pub fn encode_state(updates: &[Update]) -> Vec<u8> {
    let count = updates.len().min(u16::MAX as usize);
    let mut out = Vec::with_capacity(2 + count * 40);
    out.extend_from_slice(&(count as u16).to_be_bytes());
    for update in &updates[..count] {
        update.encode(&mut out);
    }
    out
}

/// Decodes a full state from a TCP sync frame.
pub fn decode_state(bytes: &[u8]) -> Result<Vec<Update>, DecodeError> {
    let mut reader = Reader::new(bytes);
    let count = reader.u16()?;
    let updates = (0..count)
        .map(|_| Update::decode(&mut reader))
        .collect::<Result<_, _>>()?;
    reader.finish()?;
    Ok(updates)
}

/// Encodes a probe over TCP or its answer: `seq u32 | update` (the prober's
/// news of the target, or the target's own state).
pub fn encode_probe(seq: u32, update: &Update) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + update.encoded_len());
    out.extend_from_slice(&seq.to_be_bytes());
    update.encode(&mut out);
    out
}

/// Decodes a probe over TCP or its answer.
pub fn decode_probe(bytes: &[u8]) -> Result<(u32, Update), DecodeError> {
    let mut reader = Reader::new(bytes);
    let seq = reader.u32()?;
    let update = Update::decode(&mut reader)?;
    reader.finish()?;
    Ok((seq, update))
}

/// Why a datagram was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a gossip datagram of this version")]
    NotGossip,
    #[error("failed authentication (another cluster key, or tampered)")]
    Unauthenticated,
    #[error("replayed (counter {counter} from node {from} already seen)")]
    Replayed { from: NodeId, counter: u64 },
    #[error("truncated")]
    Truncated,
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// Seals and opens datagrams, and rejects replays.
pub struct GossipCodec {
    cipher: XChaCha20Poly1305,
    counter: u64,
    /// Per sender: (run, highest counter, bitmap of the 64 below it).
    seen: HashMap<NodeId, (u64, u64, u64)>,
}

impl GossipCodec {
    /// `key`: 32 bytes derived from the cluster key for gossip only.
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(&key.into()),
            counter: 0,
            seen: HashMap::new(),
        }
    }

    /// Seals a packet into a datagram.
    pub fn seal(&mut self, packet: &Packet) -> Vec<u8> {
        self.counter += 1;
        let mut out =
            Vec::with_capacity(HEADER_LEN + NONCE_LEN + 8 + packet.encoded_len() + TAG_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        let body_start = out.len();
        put_body(&mut out, self.counter, packet);
        let (head, body) = out.split_at_mut(body_start);
        let tag = self
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &head[..HEADER_LEN], body)
            .expect("a datagram is far below the AEAD's length limit");
        out.extend_from_slice(&tag);
        out
    }

    /// Opens a datagram: authenticates it, decodes it and rejects replays.
    pub fn open(&mut self, datagram: &[u8]) -> Result<Packet, DecodeError> {
        if datagram.len() < HEADER_LEN + NONCE_LEN + TAG_LEN
            || datagram[..2] != MAGIC
            || datagram[2] != VERSION
        {
            return Err(DecodeError::NotGossip);
        }
        let (header, rest) = datagram.split_at(HEADER_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let (body, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let mut body = body.to_vec();
        self.cipher
            .decrypt_in_place_detached(XNonce::from_slice(nonce), header, &mut body, tag.into())
            .map_err(|_| DecodeError::Unauthenticated)?;
        let (counter, packet) = decode_body(&body)?;
        self.check_replay(packet.from, packet.run, counter)?;
        Ok(packet)
    }

    fn check_replay(&mut self, from: NodeId, run: u64, counter: u64) -> Result<(), DecodeError> {
        let replayed = Err(DecodeError::Replayed { from, counter });
        let entry = self.seen.entry(from).or_insert((run, 0, 0));
        if run < entry.0 {
            return replayed;
        }
        if run > entry.0 {
            *entry = (run, 0, 0);
        }
        let (_, highest, window) = entry;
        if counter > *highest {
            let shift = counter - *highest;
            *window = if *highest == 0 || shift > REPLAY_WINDOW {
                0
            } else {
                window.checked_shl(shift as u32).unwrap_or(0) | (1 << (shift - 1))
            };
            *highest = counter;
            return Ok(());
        }
        let behind = *highest - counter;
        if counter == 0 || behind > REPLAY_WINDOW || behind == 0 {
            return replayed;
        }
        let bit = 1u64 << (behind - 1);
        if *window & bit != 0 {
            return replayed;
        }
        *window |= bit;
        Ok(())
    }
}
