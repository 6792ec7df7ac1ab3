//! The versioned, length-checked envelope every message travels in, and its
//! authentication with the cluster key.
//!
//! Layout (big-endian), see `docs/ENVELOPE.md`:
//!
//! ```text
//! 0   magic        2  0xC0 0xDE
//! 2   version      1  1
//! 3   kind         1  see `Kind`
//! 4   flags        1  bit 0 sealed, bit 1 payload encrypted; others must be 0
//! 5   from         8  sender node id
//! 13  from_inc     8  sender incarnation
//! 21  to           8  recipient node id (0 for broadcast kinds)
//! 29  to_inc       8  recipient incarnation as the sender knows it
//! 37  seq          8  position in the sender's stream; for heartbeats, the last broadcast seq
//! 45  aux          8  request id for Request/Reply, counter for Heartbeat/Join/Announce
//! 53  topic_len    1
//! 54  topic        topic_len bytes of UTF-8
//! ..  payload_len  4
//! ..  payload      payload_len bytes (ciphertext when encrypted)
//! ..  tag 16             sealed, not encrypted: keyed BLAKE3 of all bytes before, truncated
//! ..  nonce 24, tag 16   encrypted: XChaCha20-Poly1305 of the payload, the header as AAD
//! ```
//!
//! A `Batch` envelope carries consecutive broadcasts of one sender in one
//! carrier message, as compact records under the batch's one seal (see
//! [`Batch`]); a `DirectBatch` envelope does the same for consecutive
//! messages of one sender to one node (see [`DirectRecord`]).

use crate::api::NodeId;
use bytes::{BufMut, Bytes, BytesMut};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;

mod pool;
pub use pool::FramePool;

pub const MAGIC: [u8; 2] = [0xC0, 0xDE];
pub const VERSION: u8 = 1;
const FIXED_LEN: usize = 54;
/// A batch's own header: the fixed header, no topic, the payload length.
const BATCH_HEAD: usize = FIXED_LEN + 4;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// The longest seal (encrypted envelopes: nonce and tag).
const SEAL_LEN: usize = NONCE_LEN + TAG_LEN;
const FLAG_SEALED: u8 = 1;
const FLAG_ENCRYPTED: u8 = 2;
/// Longest topic, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;
/// Bytes an envelope adds around its payload and topic, at most.
pub const OVERHEAD: usize = FIXED_LEN + 4 + SEAL_LEN;
/// The largest batch, in bytes, unsealed (never more than `maxMessageSize`):
/// the engine's batches, whose buffers a [`Codec`] keeps for reuse.
pub(crate) const BATCH_BYTES: usize = 60 * 1024;

/// What an envelope carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A message to every node (sequenced in the sender's broadcast stream).
    Broadcast = 1,
    /// A one-way message to one node (sequenced in the pair's direct stream).
    Direct = 2,
    /// A request to one node; `aux` is the request id.
    Request = 3,
    /// The reply to request `aux`.
    Reply = 4,
    /// An error reply to request `aux`; the payload is the UTF-8 message.
    ReplyError = 5,
    /// "I am alive" to every node; `seq` is the last broadcast seq sent.
    Heartbeat = 6,
    /// A heartbeat from a node that just started: the others answer with `Announce` at once.
    Join = 7,
    /// A heartbeat sent to one node, in answer to its `Join`.
    Announce = 8,
    /// "I am leaving": the others drop this node at once.
    Leave = 9,
    /// Consecutive broadcasts of the sender under one seal: `seq` numbers
    /// the first, `aux` says how many (see [`Batch`]).
    Batch = 10,
    /// Consecutive messages of the sender's direct stream to one node
    /// (one-way messages, requests, replies) under one seal: `seq` numbers
    /// the first, `aux` says how many (see [`DirectRecord`]).
    DirectBatch = 11,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Kind::Broadcast,
            2 => Kind::Direct,
            3 => Kind::Request,
            4 => Kind::Reply,
            5 => Kind::ReplyError,
            6 => Kind::Heartbeat,
            7 => Kind::Join,
            8 => Kind::Announce,
            9 => Kind::Leave,
            10 => Kind::Batch,
            11 => Kind::DirectBatch,
            _ => return None,
        })
    }
}

/// One decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub kind: Kind,
    pub from: NodeId,
    pub from_incarnation: u64,
    pub to: NodeId,
    pub to_incarnation: u64,
    pub seq: u64,
    pub aux: u64,
    pub topic: Bytes,
    pub payload: Bytes,
}

impl Envelope {
    /// The topic as text (checked to be UTF-8 when decoded).
    pub fn topic_str(&self) -> &str {
        std::str::from_utf8(&self.topic).unwrap_or_default()
    }
}

/// Why a frame could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("frame of {0} bytes is shorter than an envelope header")]
    Truncated(usize),
    #[error("not an envelope (bad magic bytes)")]
    BadMagic,
    #[error("unsupported envelope version {0} (this node speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("unknown flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("length fields disagree with the frame size ({0})")]
    BadLength(&'static str),
    #[error("frame of {size} bytes is larger than the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("topic is not UTF-8")]
    BadTopic,
    #[error("frame is not sealed, but this cluster requires the cluster key")]
    NotSealed,
    #[error("frame is sealed, but this node has no cluster key to check it")]
    NoKey,
    #[error("authentication failed (wrong cluster key or tampered frame)")]
    BadTag,
    #[error("message {index} of the batch is malformed: {reason}")]
    BadBatch { index: usize, reason: String },
}

impl DecodeError {
    pub fn reason(&self) -> crate::api::DropReason {
        use crate::api::DropReason;
        match self {
            DecodeError::NotSealed | DecodeError::NoKey | DecodeError::BadTag => {
                DropReason::Unauthenticated
            }
            DecodeError::TooLarge { .. } => DropReason::TooLarge,
            _ => DropReason::Malformed,
        }
    }
}

/// Why a message could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("envelope of {size} bytes is larger than the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("topic is longer than {MAX_TOPIC_LEN} bytes")]
    TopicTooLong,
}

/// Encodes and decodes envelopes, sealing them when a cluster key is set.
#[derive(Clone)]
pub struct Codec {
    keys: Option<Keys>,
    encrypt: bool,
    max_size: usize,
    /// The carrier's links authenticate every byte with the cluster key
    /// ([`Codec::on_authenticated_links`]).
    authenticated_links: bool,
    /// Buffers of frames the size of a full batch.
    pool: FramePool,
}

/// What the cluster key becomes: a MAC key for envelopes that are only
/// authenticated, and an AEAD key for encrypted ones.
#[derive(Clone)]
struct Keys {
    /// Key of the keyed BLAKE3 tag.
    mac: [u8; 32],
    cipher: XChaCha20Poly1305,
}

impl Keys {
    fn seal_len(encrypted: bool) -> usize {
        if encrypted { SEAL_LEN } else { TAG_LEN }
    }
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec")
            .field("sealed", &self.keys.is_some())
            .field("encrypt", &self.encrypt)
            .field("max_size", &self.max_size)
            .field("authenticated_links", &self.authenticated_links)
            .finish()
    }
}

impl Codec {
    /// `key`: the cluster key (any length; a 256-bit key is derived from it with
    /// HKDF-SHA256, bound to the cluster name). `encrypt` needs a key.
    pub fn new(cluster: &str, key: Option<&[u8]>, encrypt: bool, max_size: usize) -> Self {
        let derive = |salt: &[u8], key: &[u8]| {
            let mut derived = [0u8; 32];
            hkdf::Hkdf::<Sha256>::new(Some(salt), key)
                .expand(cluster.as_bytes(), &mut derived)
                .expect("32 bytes is a valid HKDF length");
            derived
        };
        let keys = key.map(|key| Keys {
            mac: derive(b"coordinator envelope mac v1", key),
            cipher: XChaCha20Poly1305::new(&derive(b"coordinator envelope v1", key).into()),
        });
        Self {
            encrypt: encrypt && keys.is_some(),
            keys,
            max_size,
            authenticated_links: false,
            pool: FramePool::new(BATCH_HEAD + max_size.min(BATCH_BYTES) + SEAL_LEN),
        }
    }

    /// For a carrier whose every link proved the cluster key and protects
    /// each byte on it ([`crate::transport::Transport::authenticates_links`]:
    /// Native's TLS sessions, bound to a proof of the key): envelopes go out
    /// without a seal of their own, and one that comes without a seal is
    /// accepted, since the link already authenticated (and encrypted) it. A
    /// sealed one is still verified. Sizes stay those of sealed envelopes
    /// ([`Codec::max_payload`]), so every node accepts the same payloads.
    pub fn on_authenticated_links(mut self) -> Self {
        self.authenticated_links = true;
        self
    }

    /// The largest payload that fits with a topic of `topic_len` bytes.
    pub fn max_payload(&self, topic_len: usize) -> usize {
        self.max_size.saturating_sub(OVERHEAD + topic_len)
    }

    /// Bytes a seal adds to a frame with this codec.
    fn seal_len(&self) -> usize {
        if self.keys.is_some() && !self.authenticated_links {
            Keys::seal_len(self.encrypt)
        } else {
            0
        }
    }

    /// Checks that an envelope with this topic and payload can be sent on its
    /// own; returns its size unsealed (what it adds to a [`Batch`]).
    pub fn check(&self, topic_len: usize, payload_len: usize) -> Result<usize, EncodeError> {
        if topic_len > MAX_TOPIC_LEN {
            return Err(EncodeError::TopicTooLong);
        }
        let plain = FIXED_LEN + topic_len + 4 + payload_len;
        let size = plain + self.seal_len();
        if size > self.max_size {
            return Err(EncodeError::TooLarge {
                size,
                max: self.max_size,
            });
        }
        Ok(plain)
    }

    /// The buffers this codec's frames are written in, for [`Batch::in_pool`].
    pub fn pool(&self) -> &FramePool {
        &self.pool
    }

    /// The largest [`Batch::size`] that still fits in one frame once sealed.
    pub fn batch_limit(&self) -> usize {
        self.max_size.saturating_sub(self.seal_len())
    }

    pub fn encode(&self, envelope: &Envelope) -> Result<Bytes, EncodeError> {
        self.check(envelope.topic.len(), envelope.payload.len())?;
        Ok(self.encode_parts(&envelope.header(), &envelope.topic, &envelope.payload))
    }

    /// Encodes and seals one envelope from its parts (sizes checked with
    /// [`Codec::check`]).
    pub fn encode_parts(&self, header: &Header, topic: &[u8], payload: &[u8]) -> Bytes {
        let mut frame = self
            .pool
            .take(FIXED_LEN + topic.len() + 4 + payload.len() + self.seal_len());
        put_plain(&mut frame, header, topic, payload);
        self.seal(frame, FIXED_LEN + topic.len() + 4)
    }

    /// Seals a batch: as a `Batch` envelope, or as a plain `Broadcast` if it
    /// holds only one.
    pub fn seal_batch(&self, batch: Batch) -> Bytes {
        let Batch {
            mut frame,
            count,
            from,
            from_incarnation,
            first_seq,
            ..
        } = batch;
        let header = Header {
            kind: Kind::Broadcast,
            from,
            from_incarnation,
            to: 0,
            to_incarnation: 0,
            seq: first_seq,
            aux: 0,
        };
        if count == 1 {
            let record = Records::new(self.pool.freeze(frame).slice(BATCH_HEAD..))
                .next()
                .and_then(Result::ok)
                .expect("a batch holds the record it was given");
            return self.encode_parts(&header, &record.topic, &record.payload);
        }
        let payload_len = (frame.len() - BATCH_HEAD) as u32;
        let mut head = &mut frame[..BATCH_HEAD];
        put_header(
            &mut head,
            &Header {
                kind: Kind::Batch,
                aux: u64::from(count),
                ..header
            },
            &[],
        );
        head.put_u32(payload_len);
        self.seal(frame, BATCH_HEAD)
    }

    /// Seals consecutive messages of this node's direct stream to one node
    /// as one frame: `header` gives the sender, the recipient and the first
    /// message's number (its `kind` and `aux` are the batch's own). One
    /// message goes as a plain envelope of its kind; more go as a
    /// `DirectBatch` (sizes checked with [`Codec::check`] and
    /// [`DirectRecord::size`] against [`Codec::batch_limit`]).
    pub fn seal_direct(&self, header: &Header, records: &[DirectRecord<'_>]) -> Bytes {
        if let [one] = records {
            let header = Header {
                kind: one.kind,
                aux: one.aux,
                ..*header
            };
            return self.encode_parts(&header, &[], one.payload);
        }
        let payload_len: usize = records.iter().map(DirectRecord::size).sum();
        let mut frame = self.pool.take(BATCH_HEAD + payload_len + self.seal_len());
        put_header(
            &mut frame,
            &Header {
                kind: Kind::DirectBatch,
                aux: records.len() as u64,
                ..*header
            },
            &[],
        );
        frame.put_u32(payload_len as u32);
        for record in records {
            frame.put_u8(record.kind as u8);
            frame.put_u64(record.aux);
            frame.put_u32(record.payload.len() as u32);
            frame.put_slice(record.payload);
        }
        self.seal(frame, BATCH_HEAD)
    }

    /// Sets the flags of an unsealed frame and appends its seal; the payload
    /// starts at `payload_at`.
    fn seal(&self, mut frame: Vec<u8>, payload_at: usize) -> Bytes {
        let Some(keys) = self.keys.as_ref().filter(|_| !self.authenticated_links) else {
            return self.pool.freeze(frame);
        };
        frame[4] = FLAG_SEALED | if self.encrypt { FLAG_ENCRYPTED } else { 0 };
        if self.encrypt {
            let mut nonce = XNonce::default();
            rand::rng().fill_bytes(&mut nonce);
            let (head, payload) = frame.split_at_mut(payload_at);
            let tag = keys
                .cipher
                .encrypt_in_place_detached(&nonce, head, payload)
                .expect("XChaCha20-Poly1305 seals any envelope that fits in memory");
            frame.put_slice(&nonce);
            frame.put_slice(&tag);
        } else {
            let tag = blake3::keyed_hash(&keys.mac, &frame);
            frame.put_slice(&tag.as_bytes()[..TAG_LEN]);
        }
        self.pool.freeze(frame)
    }

    /// Decodes and verifies a frame. Never panics, whatever the bytes. A
    /// `Batch` comes back as such: [`Codec::unbatch`] opens it.
    pub fn decode(&self, frame: Bytes) -> Result<Envelope, DecodeError> {
        if frame.len() > self.max_size {
            return Err(DecodeError::TooLarge {
                size: frame.len(),
                max: self.max_size,
            });
        }
        let layout = Layout::read(&frame)?;
        let sealed = layout.flags & FLAG_SEALED != 0;
        let encrypted = layout.flags & FLAG_ENCRYPTED != 0;
        match (&self.keys, sealed) {
            (Some(_), false) if !self.authenticated_links => return Err(DecodeError::NotSealed),
            (None, true) => return Err(DecodeError::NoKey),
            _ => {}
        }
        let seal_len = if sealed { Keys::seal_len(encrypted) } else { 0 };
        let Some(body_end) = frame.len().checked_sub(seal_len) else {
            return Err(DecodeError::Truncated(frame.len()));
        };
        if layout.payload_at > body_end {
            return Err(DecodeError::BadLength("topic length"));
        }
        if layout.payload_at.checked_add(layout.payload_len) != Some(body_end) {
            return Err(DecodeError::BadLength("payload length"));
        }
        let mut payload = frame.slice(layout.payload_at..body_end);
        if let Some(keys) = self.keys.as_ref().filter(|_| sealed) {
            if encrypted {
                let nonce = XNonce::from_slice(&frame[body_end..body_end + NONCE_LEN]);
                let tag = chacha20poly1305::Tag::from_slice(&frame[body_end + NONCE_LEN..]);
                let mut plain = BytesMut::from(&payload[..]);
                keys.cipher
                    .decrypt_in_place_detached(nonce, &frame[..layout.payload_at], &mut plain, tag)
                    .map_err(|_| DecodeError::BadTag)?;
                payload = plain.freeze();
            } else {
                let expected = blake3::keyed_hash(&keys.mac, &frame[..body_end]);
                let expected: &[u8; TAG_LEN] = expected.as_bytes()[..TAG_LEN]
                    .try_into()
                    .expect("a BLAKE3 hash is 32 bytes");
                let found: &[u8; TAG_LEN] = frame[body_end..]
                    .try_into()
                    .map_err(|_| DecodeError::BadTag)?;
                // Constant-time comparison of the truncated tag.
                if !constant_time_eq::constant_time_eq_16(expected, found) {
                    return Err(DecodeError::BadTag);
                }
            }
        }
        layout.envelope(&frame, payload)
    }

    /// The messages of a decoded (so verified) `Batch` or `DirectBatch`, in
    /// order: numbers `seq` to `seq + aux - 1` of the sender's broadcast
    /// stream, or of its direct stream to the recipient. One bad record
    /// refuses the whole batch.
    pub fn unbatch(&self, batch: &Envelope) -> Result<Vec<Envelope>, DecodeError> {
        let bad = |index: usize, reason: String| DecodeError::BadBatch { index, reason };
        let direct = match batch.kind {
            Kind::Batch => false,
            Kind::DirectBatch => true,
            _ => {
                return Err(bad(
                    0,
                    format!("a {:?} envelope is not a batch", batch.kind),
                ));
            }
        };
        // A broadcast batch names no recipient; a direct one does.
        if batch.seq == 0 || (batch.to != 0) != direct || !batch.topic.is_empty() {
            return Err(bad(0, "header fields of a batch out of range".into()));
        }
        if !direct && batch.to_incarnation != 0 {
            return Err(bad(0, "header fields of a batch out of range".into()));
        }
        if direct {
            return unbatch_direct(batch);
        }
        let count = usize::try_from(batch.aux).unwrap_or(usize::MAX);
        let mut envelopes = Vec::with_capacity(count.min(batch.payload.len() / RECORD_MIN + 1));
        for (index, record) in Records::new(batch.payload.clone()).enumerate() {
            let record = record.map_err(|reason| bad(index, reason.into()))?;
            let seq = batch
                .seq
                .checked_add(index as u64)
                .ok_or_else(|| bad(index, "numbers past the end of the stream".into()))?;
            envelopes.push(Envelope {
                kind: Kind::Broadcast,
                from: batch.from,
                from_incarnation: batch.from_incarnation,
                to: 0,
                to_incarnation: 0,
                seq,
                aux: 0,
                topic: record.topic,
                payload: record.payload,
            });
        }
        if envelopes.len() != count {
            return Err(bad(
                envelopes.len(),
                format!(
                    "{} broadcasts where the batch says {count}",
                    envelopes.len()
                ),
            ));
        }
        Ok(envelopes)
    }
}

/// The messages of a verified `DirectBatch` (header fields checked).
fn unbatch_direct(batch: &Envelope) -> Result<Vec<Envelope>, DecodeError> {
    let bad = |index: usize, reason: String| DecodeError::BadBatch { index, reason };
    let count = usize::try_from(batch.aux).unwrap_or(usize::MAX);
    let bytes = &batch.payload;
    let mut envelopes = Vec::with_capacity(count.min(bytes.len() / DirectRecord::HEAD + 1));
    let mut at = 0;
    while at < bytes.len() {
        let index = envelopes.len();
        let Some(head) = bytes.get(at..at + DirectRecord::HEAD) else {
            return Err(bad(index, "record runs past the batch".into()));
        };
        let kind = match Kind::from_byte(head[0]) {
            Some(kind @ (Kind::Direct | Kind::Request | Kind::Reply | Kind::ReplyError)) => kind,
            _ => {
                return Err(bad(
                    index,
                    format!("kind {} cannot be in a direct batch", head[0]),
                ));
            }
        };
        let aux = u64::from_be_bytes(head[1..9].try_into().expect("8 bytes"));
        let payload_len = u32::from_be_bytes(head[9..13].try_into().expect("4 bytes")) as usize;
        let payload_at = at + DirectRecord::HEAD;
        let end = payload_at
            .checked_add(payload_len)
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| bad(index, "payload runs past the batch".into()))?;
        let seq = batch
            .seq
            .checked_add(index as u64)
            .ok_or_else(|| bad(index, "numbers past the end of the stream".into()))?;
        envelopes.push(Envelope {
            kind,
            from: batch.from,
            from_incarnation: batch.from_incarnation,
            to: batch.to,
            to_incarnation: batch.to_incarnation,
            seq,
            aux,
            topic: Bytes::new(),
            payload: bytes.slice(payload_at..end),
        });
        at = end;
    }
    if envelopes.len() != count {
        return Err(bad(
            envelopes.len(),
            format!("{} messages where the batch says {count}", envelopes.len()),
        ));
    }
    Ok(envelopes)
}

/// One message of a `DirectBatch`, for [`Codec::seal_direct`].
///
/// A `DirectBatch` envelope's payload is a run of records, one per message:
/// `kind` (1 byte: `Direct`, `Request`, `Reply` or `ReplyError`), `aux`
/// (8 bytes: the request id, 0 for `Direct`), `payload_len` (4 bytes), the
/// payload. The batch's `seq` numbers the first; `aux` says how many.
#[derive(Clone, Copy, Debug)]
pub struct DirectRecord<'a> {
    pub kind: Kind,
    pub aux: u64,
    pub payload: &'a [u8],
}

impl DirectRecord<'_> {
    /// A record's bytes before its payload.
    pub const HEAD: usize = 1 + 8 + 4;

    /// What this message adds to a `DirectBatch`.
    pub fn size(&self) -> usize {
        Self::record_size(self.payload.len())
    }

    /// What a message of `payload_len` bytes adds to a `DirectBatch`.
    pub fn record_size(payload_len: usize) -> usize {
        Self::HEAD + payload_len
    }

    /// A `DirectBatch`'s bytes before its records.
    pub const BATCH_HEAD: usize = BATCH_HEAD;
}

/// Consecutive broadcasts of one sender gathered for one frame, unsealed
/// until [`Codec::seal_batch`].
///
/// A `Batch` envelope's payload is a run of records, one per broadcast:
/// `topic_len` (1 byte; 0 repeats the topic of the record before), the topic,
/// `payload_len` (4 bytes), the payload. The batch's `seq` numbers the first;
/// `aux` says how many.
#[derive(Debug)]
pub struct Batch {
    /// Room for the batch's own header, then the records (and room for a seal).
    frame: Vec<u8>,
    count: u32,
    from: NodeId,
    from_incarnation: u64,
    first_seq: u64,
    /// Where the last record's topic is in `frame`.
    last_topic: std::ops::Range<usize>,
}

/// The shortest record: a repeated topic and an empty payload.
const RECORD_MIN: usize = 1 + 4;

impl Batch {
    /// A batch of up to `capacity` bytes (unsealed).
    pub fn new(from: NodeId, from_incarnation: u64, capacity: usize) -> Self {
        Self::with_buffer(
            from,
            from_incarnation,
            Vec::with_capacity(BATCH_HEAD + capacity + SEAL_LEN),
        )
    }

    /// A batch written in a buffer of `pool` (the sealing codec's, see
    /// [`Codec::pool`]), which goes back to it once its frame is dropped.
    pub fn in_pool(pool: &FramePool, from: NodeId, from_incarnation: u64, capacity: usize) -> Self {
        Self::with_buffer(
            from,
            from_incarnation,
            pool.take(BATCH_HEAD + capacity + SEAL_LEN),
        )
    }

    fn with_buffer(from: NodeId, from_incarnation: u64, mut frame: Vec<u8>) -> Self {
        frame.put_bytes(0, BATCH_HEAD);
        Self {
            frame,
            count: 0,
            from,
            from_incarnation,
            first_seq: 0,
            last_topic: 0..0,
        }
    }

    /// How many broadcasts it holds.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Its size unsealed, as a batch.
    pub fn size(&self) -> usize {
        self.frame.len()
    }

    /// What a broadcast on `topic` with `payload_len` bytes would add.
    pub fn record_size(&self, topic: &[u8], payload_len: usize) -> usize {
        let topic_len = if self.repeats(topic) { 0 } else { topic.len() };
        1 + topic_len + 4 + payload_len
    }

    fn repeats(&self, topic: &[u8]) -> bool {
        self.count > 0 && self.frame[self.last_topic.clone()] == *topic
    }

    /// Appends broadcast `seq` (the one after the last; sizes checked with
    /// [`Codec::check`]; the topic is 1 to 255 bytes of UTF-8).
    pub fn push(&mut self, seq: u64, topic: &[u8], payload: &[u8]) {
        debug_assert!(!topic.is_empty() && topic.len() <= MAX_TOPIC_LEN);
        if self.count == 0 {
            self.first_seq = seq;
        }
        debug_assert_eq!(seq, self.first_seq + u64::from(self.count));
        if self.repeats(topic) {
            self.frame.put_u8(0);
        } else {
            self.frame.put_u8(topic.len() as u8);
            let at = self.frame.len();
            self.frame.put_slice(topic);
            self.last_topic = at..at + topic.len();
        }
        self.frame.put_u32(payload.len() as u32);
        self.frame.put_slice(payload);
        self.count += 1;
    }
}

/// One record of a batch.
struct Record {
    topic: Bytes,
    payload: Bytes,
}

/// Reads the records of a batch's payload.
struct Records {
    bytes: Bytes,
    at: usize,
    topic: Option<Bytes>,
}

impl Records {
    fn new(bytes: Bytes) -> Self {
        Self {
            bytes,
            at: 0,
            topic: None,
        }
    }

    fn read(&mut self) -> Result<Record, &'static str> {
        let bytes = &self.bytes;
        let topic_len = bytes[self.at] as usize;
        if topic_len == 0 && self.topic.is_none() {
            return Err("the first record repeats no topic");
        }
        let topic_at = self.at + 1;
        let length_at = topic_at + topic_len;
        let Some(length) = bytes.get(length_at..length_at + 4) else {
            return Err("record runs past the batch");
        };
        let payload_len = u32::from_be_bytes(length.try_into().expect("4 bytes")) as usize;
        let payload_at = length_at + 4;
        let end = payload_at
            .checked_add(payload_len)
            .filter(|&end| end <= bytes.len())
            .ok_or("payload runs past the batch")?;
        let topic = if topic_len == 0 {
            self.topic.clone().unwrap_or_default()
        } else {
            let topic = bytes.slice(topic_at..length_at);
            if std::str::from_utf8(&topic).is_err() {
                return Err("topic is not UTF-8");
            }
            self.topic = Some(topic.clone());
            topic
        };
        let payload = bytes.slice(payload_at..end);
        self.at = end;
        Ok(Record { topic, payload })
    }
}

impl Iterator for Records {
    type Item = Result<Record, &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.bytes.len() {
            return None;
        }
        let record = self.read();
        if record.is_err() {
            // Nothing after a bad record can be trusted to be one.
            self.at = self.bytes.len();
        }
        Some(record)
    }
}

/// An envelope's fixed fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub from: NodeId,
    pub from_incarnation: u64,
    pub to: NodeId,
    pub to_incarnation: u64,
    pub seq: u64,
    pub aux: u64,
}

impl Envelope {
    fn header(&self) -> Header {
        Header {
            kind: self.kind,
            from: self.from,
            from_incarnation: self.from_incarnation,
            to: self.to,
            to_incarnation: self.to_incarnation,
            seq: self.seq,
            aux: self.aux,
        }
    }
}

/// Writes the fixed header (flags 0) and the topic.
fn put_header(out: &mut impl BufMut, header: &Header, topic: &[u8]) {
    out.put_slice(&MAGIC);
    out.put_u8(VERSION);
    out.put_u8(header.kind as u8);
    out.put_u8(0);
    out.put_u64(header.from);
    out.put_u64(header.from_incarnation);
    out.put_u64(header.to);
    out.put_u64(header.to_incarnation);
    out.put_u64(header.seq);
    out.put_u64(header.aux);
    out.put_u8(topic.len() as u8);
    out.put_slice(topic);
}

/// Writes an unsealed envelope (flags 0).
fn put_plain(out: &mut impl BufMut, header: &Header, topic: &[u8], payload: &[u8]) {
    put_header(out, header, topic);
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
}

/// Where the parts of an envelope are, read from its header alone.
struct Layout {
    kind: Kind,
    flags: u8,
    topic_end: usize,
    payload_at: usize,
    payload_len: usize,
}

impl Layout {
    fn read(frame: &[u8]) -> Result<Self, DecodeError> {
        if frame.len() < FIXED_LEN + 4 {
            return Err(DecodeError::Truncated(frame.len()));
        }
        if frame[0..2] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if frame[2] != VERSION {
            return Err(DecodeError::UnsupportedVersion(frame[2]));
        }
        let kind = Kind::from_byte(frame[3]).ok_or(DecodeError::UnknownKind(frame[3]))?;
        let flags = frame[4];
        if flags & !(FLAG_SEALED | FLAG_ENCRYPTED) != 0 || flags == FLAG_ENCRYPTED {
            return Err(DecodeError::UnknownFlags(flags));
        }
        let topic_end = FIXED_LEN + frame[53] as usize;
        let payload_at = topic_end + 4;
        let Some(length) = frame.get(topic_end..payload_at) else {
            return Err(DecodeError::BadLength("topic length"));
        };
        let payload_len = u32::from_be_bytes(length.try_into().expect("4 bytes in range")) as usize;
        Ok(Self {
            kind,
            flags,
            topic_end,
            payload_at,
            payload_len,
        })
    }

    /// The envelope of `frame`, whose payload (checked, decrypted) is `payload`.
    fn envelope(&self, frame: &Bytes, payload: Bytes) -> Result<Envelope, DecodeError> {
        let word =
            |at: usize| u64::from_be_bytes(frame[at..at + 8].try_into().expect("8 bytes in range"));
        let topic = frame.slice(FIXED_LEN..self.topic_end);
        if std::str::from_utf8(&topic).is_err() {
            return Err(DecodeError::BadTopic);
        }
        Ok(Envelope {
            kind: self.kind,
            from: word(5),
            from_incarnation: word(13),
            to: word(21),
            to_incarnation: word(29),
            seq: word(37),
            aux: word(45),
            topic,
            payload,
        })
    }
}

/// The claimed sender of a frame, without checking anything else (for fault injection).
pub fn peek_sender(frame: &[u8]) -> Option<NodeId> {
    if frame.len() >= FIXED_LEN && frame[0..2] == MAGIC {
        Some(u64::from_be_bytes(frame[5..13].try_into().ok()?))
    } else {
        None
    }
}

/// The request id of a `Request`, `Reply` or `ReplyError` frame (`aux`),
/// read without verifying the frame.
pub fn peek_request_id(frame: &[u8]) -> Option<u64> {
    match peek_kind(frame)? {
        Kind::Request | Kind::Reply | Kind::ReplyError => {
            Some(u64::from_be_bytes(frame[45..53].try_into().ok()?))
        }
        _ => None,
    }
}

/// The number of the last broadcast a `Broadcast` or `Batch` frame carries,
/// read without verifying the frame (for carriers that let heartbeats
/// overtake queued broadcasts, see [`cap_announced`]).
pub fn peek_broadcast_high(frame: &[u8]) -> Option<u64> {
    let word = |at: usize| Some(u64::from_be_bytes(frame.get(at..at + 8)?.try_into().ok()?));
    match peek_kind(frame)? {
        Kind::Broadcast => word(37),
        Kind::Batch => Some(word(37)?.saturating_add(word(45)?.max(1) - 1)),
        _ => None,
    }
}

/// A copy of a `Heartbeat`, `Join` or `Announce` frame that announces no
/// broadcast past `high`; `None` when it announces none past it already, or
/// when it is not such a frame or carries a seal (which covers the number).
///
/// A heartbeat tells the highest broadcast its sender has handed to the
/// carrier. A carrier whose links let heartbeats go ahead of the broadcasts
/// queued for a peer (Native) caps it at the last broadcast written to that
/// peer before it: otherwise the peer would wait for broadcasts still queued
/// behind the heartbeat, and on a slow link report them lost after
/// `reorderTimeout` and drop them when they came. Only carriers that
/// authenticate their links send envelopes without a seal.
pub fn cap_announced(frame: &[u8], high: u64) -> Option<Bytes> {
    if !matches!(
        peek_kind(frame)?,
        Kind::Heartbeat | Kind::Join | Kind::Announce
    ) || frame[4] != 0
    {
        return None;
    }
    let announced = u64::from_be_bytes(frame[37..45].try_into().ok()?);
    if announced <= high {
        return None;
    }
    let mut capped = frame.to_vec();
    capped[37..45].copy_from_slice(&high.to_be_bytes());
    Some(Bytes::from(capped))
}

/// The claimed kind of a frame, without checking anything else (for carriers
/// that give control traffic priority).
pub fn peek_kind(frame: &[u8]) -> Option<Kind> {
    if frame.len() >= FIXED_LEN && frame[0..2] == MAGIC {
        Kind::from_byte(frame[3])
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
