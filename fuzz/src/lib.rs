//! The bodies of the fuzz targets: each drives the same functions a node runs
//! on bytes it receives (or, for `config`, on a file an operator wrote).
//!
//! `fuzz_targets/*.rs` hand libFuzzer's inputs to these; `tests/replay.rs`
//! runs every input kept in `corpus/` and `regressions/` through them in the
//! normal test suite, on stable Rust. A body returns normally on any input:
//! a panic, an overflow, a hang or an allocation beyond the bound given to
//! libFuzzer is a bug.

use bytes::Bytes;
use coordinator_core::engine::core::{Broadcasting, Core, Output, Sending};
use coordinator_core::envelope::{Codec, Envelope, Kind};
use coordinator_core::{MemberState, Settings};
use coordinator_native::frame::{FrameDecoder, FrameType};
use coordinator_native::handshake::{self, AuthKey, Hello};
use coordinator_native::swim::{self, GossipCodec, Swim, SwimConfig};
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::codec::FramedRead;

/// The cluster the targets' nodes belong to, and its key: seeds sealed with
/// them reach past authentication.
pub const CLUSTER: &str = "fuzz";
pub const CLUSTER_KEY: &str = "fuzz-cluster-key";
/// The largest frame body the targets accept (a node's `maxMessageSize` plus
/// its envelope, as configured by default).
pub const MAX_FRAME: usize = 1 << 20;

/// Names of the targets, as in `fuzz_targets/` and `corpus/`.
pub const TARGETS: &[&str] = &[
    "envelope",
    "engine",
    "frames",
    "handshake",
    "gossip",
    "swim",
    "raft_wire",
    "config",
];

/// Runs target `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "envelope" => envelope(data),
        "engine" => engine(data),
        "frames" => frames(data),
        "handshake" => handshake(data),
        "gossip" => gossip(data),
        "swim" => swim(data),
        "raft_wire" => raft_wire(data),
        "config" => config(data),
        other => panic!("no fuzz target named {other}"),
    }
}

fn codec(key: Option<&str>) -> Codec {
    Codec::new(CLUSTER, key.map(str::as_bytes), false, MAX_FRAME)
}

/// One frame from a carrier, opened as the engine opens it: with the key,
/// without it, and with encryption on.
pub fn envelope(data: &[u8]) {
    let frame = Bytes::copy_from_slice(data);
    for codec in [
        codec(Some(CLUSTER_KEY)),
        codec(None),
        Codec::new(CLUSTER, Some(CLUSTER_KEY.as_bytes()), true, MAX_FRAME),
    ] {
        if let Ok(envelope) = codec.decode(frame.clone())
            && matches!(envelope.kind, Kind::Batch | Kind::DirectBatch)
        {
            let _ = codec.unbatch(&envelope);
        }
        let _ = coordinator_core::envelope::peek_kind(data);
        let _ = coordinator_core::envelope::peek_sender(data);
        let _ = coordinator_core::envelope::peek_request_id(data);
    }
}

/// Reads the records of a stateful target's input: an operation byte, then
/// its fields (big-endian), byte strings with a u16 length before them. A
/// short read ends the input. `corpus/` seeds are written in this form by
/// `make-seeds` (see [`Records`] there).
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn u8(&mut self) -> Option<u8> {
        let (&byte, rest) = self.data.split_first()?;
        self.data = rest;
        Some(byte)
    }

    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::from(self.u16()?);
        if len > self.data.len() {
            return None;
        }
        let (head, rest) = self.data.split_at(len);
        self.data = rest;
        Some(head)
    }
}

/// Writes records in the form [`Input`] reads.
#[derive(Default)]
pub struct Records(pub Vec<u8>);

impl Records {
    pub fn op(&mut self, op: u8) -> &mut Self {
        self.0.push(op);
        self
    }
    pub fn u8(&mut self, value: u8) -> &mut Self {
        self.0.push(value);
        self
    }
    pub fn u16(&mut self, value: u16) -> &mut Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        let len = bytes.len().min(usize::from(u16::MAX));
        self.u16(len as u16);
        self.0.extend_from_slice(&bytes[..len]);
        self
    }
}

/// Operations of the `engine` target.
pub mod engine_op {
    /// `bytes`: a frame as a carrier hands it over (captured, or anyone's).
    pub const FRAME: u8 = 0;
    /// `kind from incarnation to_me to_incarnation seq:u16 aux:u16 topic
    /// payload:bytes`: an envelope from a peer with the key.
    pub const PEER: u8 = 1;
    /// `at:u16 byte`, then a FRAME or PEER record: that frame altered.
    pub const TAMPERED: u8 = 2;
    /// `from incarnation first:u16 count (topic payload:bytes)*count`: a
    /// batch of broadcasts from a peer with the key.
    pub const BATCH: u8 = 3;
    /// `id incarnation state`: the carrier's verdict on a member.
    pub const MEMBER: u8 = 4;
    /// `up`: the carrier's link went down or came back.
    pub const LINK: u8 = 5;
    /// `ms:u16`: time passes.
    pub const WAIT: u8 = 6;
    /// `topic payload:bytes`: the application broadcasts.
    pub const BROADCAST: u8 = 7;
    /// `to payload:bytes`: the application sends.
    pub const SEND: u8 = 8;
    /// `to timeout payload:bytes`: the application asks.
    pub const REQUEST: u8 = 9;
    /// `which byte ok`: the application answers a request it got.
    pub const REPLY: u8 = 10;
    /// `ok`: the carrier reports the oldest frame handed to it.
    pub const SENT: u8 = 11;
    pub const COUNT: u8 = 12;
}

const TOPICS: [&str; 3] = ["a", "topic", "t/with/levels"];

fn member_state(byte: u8) -> MemberState {
    match byte % 4 {
        0 => MemberState::Alive,
        1 => MemberState::Suspect,
        2 => MemberState::Dead,
        _ => MemberState::Left,
    }
}

fn kind(byte: u8) -> Kind {
    match byte % 11 {
        0 => Kind::Broadcast,
        1 => Kind::Direct,
        2 => Kind::Request,
        3 => Kind::Reply,
        4 => Kind::ReplyError,
        5 => Kind::Heartbeat,
        6 => Kind::Join,
        7 => Kind::Announce,
        8 => Kind::Leave,
        9 => Kind::Batch,
        _ => Kind::DirectBatch,
    }
}

/// Reads a FRAME or PEER record's frame.
fn engine_frame(op: u8, input: &mut Input<'_>, me: u64, key: &Codec) -> Option<Bytes> {
    use engine_op::*;
    match op {
        FRAME => Some(Bytes::copy_from_slice(input.bytes()?)),
        PEER => {
            let (k, from, from_incarnation) = (input.u8()?, input.u8()?, input.u8()?);
            let (to_me, to_incarnation) = (input.u8()?, input.u8()?);
            let (seq, aux, topic) = (input.u16()?, input.u16()?, input.u8()?);
            let envelope = Envelope {
                kind: kind(k),
                from: u64::from(from % 4 + 2),
                from_incarnation: u64::from(from_incarnation % 3 + 1),
                to: if to_me & 1 == 1 { me } else { 0 },
                to_incarnation: u64::from(to_incarnation % 2),
                seq: u64::from(seq),
                aux: u64::from(aux),
                topic: Bytes::from_static(TOPICS[usize::from(topic) % TOPICS.len()].as_bytes()),
                payload: Bytes::copy_from_slice(input.bytes()?),
            };
            key.encode(&envelope).ok()
        }
        _ => None,
    }
}

/// A sequence of inputs to one engine core (see [`engine_op`]): frames from
/// outsiders and from peers with the key, member verdicts, link events, the
/// time, the application's calls and the carrier's outcomes, as the driver
/// gives them.
pub fn engine(data: &[u8]) {
    use engine_op::*;
    let mut input = Input::new(data);
    let me = 1;
    let settings = Settings::new(me)
        .cluster(CLUSTER)
        .cluster_key(CLUSTER_KEY)
        .max_members(16);
    // Membership from the engine's own heartbeats (broker carriers) or from
    // the carrier's failure detector (Native): the input's first byte says.
    let carrier_reports = data.first().is_some_and(|byte| byte & 0x80 != 0);
    let mut core = Core::new(&settings, 7, carrier_reports);
    let key = codec(Some(CLUSTER_KEY));
    let mut now = Instant::now();
    core.start(now);
    let mut in_flight: VecDeque<u64> = VecDeque::new();
    let mut requests: Vec<(u64, u64)> = Vec::new();
    for _ in 0..512 {
        let Some(op) = input.u8() else { break };
        let op = op % COUNT;
        let step = (|| -> Option<()> {
            match op {
                FRAME | PEER => {
                    let frame = engine_frame(op, &mut input, me, &key)?;
                    core.handle_frame(now, frame);
                }
                TAMPERED => {
                    let (at, byte) = (input.u16()?, input.u8()?);
                    let inner = input.u8()? % 2;
                    let mut bytes = engine_frame(inner, &mut input, me, &key)?.to_vec();
                    if !bytes.is_empty() {
                        let at = usize::from(at) % (bytes.len() + 1);
                        if at == bytes.len() {
                            bytes.truncate(usize::from(byte) % bytes.len());
                        } else {
                            bytes[at] ^= byte | 1;
                        }
                    }
                    core.handle_frame(now, Bytes::from(bytes));
                }
                BATCH => {
                    let (from, incarnation, first) = (input.u8()?, input.u8()?, input.u16()?);
                    let count = input.u8()?;
                    let mut batch = coordinator_core::envelope::Batch::new(
                        u64::from(from % 4 + 2),
                        u64::from(incarnation % 3 + 1),
                        4096,
                    );
                    for seq in u64::from(first)..u64::from(first) + u64::from(count) {
                        let topic = TOPICS[usize::from(input.u8()?) % TOPICS.len()].as_bytes();
                        let payload = input.bytes()?;
                        if key.check(topic.len(), payload.len()).is_err() {
                            break;
                        }
                        batch.push(seq, topic, payload);
                    }
                    if !batch.is_empty() {
                        core.handle_frame(now, key.seal_batch(batch));
                    }
                }
                MEMBER => {
                    let (id, incarnation, state) = (input.u8()?, input.u8()?, input.u8()?);
                    core.handle_member_report(
                        now,
                        u64::from(id % 5 + 1),
                        u64::from(incarnation % 3 + 1),
                        member_state(state),
                    );
                }
                LINK => {
                    let up = input.u8()? & 1 == 1;
                    core.handle_link((!up).then(|| "fuzz".to_string()));
                }
                WAIT => {
                    now += Duration::from_millis(u64::from(input.u16()?) % 5_000);
                    core.handle_timeout(now);
                }
                BROADCAST => {
                    let topic = TOPICS[usize::from(input.u8()?) % TOPICS.len()];
                    let payload = Bytes::copy_from_slice(input.bytes()?);
                    if let Ok(Broadcasting::Alone { transmit, .. }) =
                        core.broadcast(now, topic, &payload)
                    {
                        in_flight.push_back(transmit.token);
                    }
                }
                SEND => {
                    let to = u64::from(input.u8()? % 5 + 1);
                    let payload = Bytes::copy_from_slice(input.bytes()?);
                    if let Ok(Sending::Now { transmit, .. }) = core.send(now, to, payload) {
                        in_flight.push_back(transmit.token);
                    }
                }
                REQUEST => {
                    let (to, timeout) = (u64::from(input.u8()? % 5 + 1), input.u8()?);
                    let payload = Bytes::copy_from_slice(input.bytes()?);
                    let timeout = Duration::from_millis(u64::from(timeout) * 10);
                    if let Ok((_, Sending::Now { transmit, .. })) =
                        core.request(now, to, payload, timeout)
                    {
                        in_flight.push_back(transmit.token);
                    }
                }
                REPLY => {
                    let (which, byte, ok) = (input.u8()?, input.u8()?, input.u8()?);
                    if let Some(&(from, request)) = requests.get(usize::from(which)) {
                        let result = if ok & 1 == 1 {
                            Ok(Bytes::from(vec![byte; 3]))
                        } else {
                            Err("refused".to_string())
                        };
                        if let Ok(Sending::Now { transmit, .. }) =
                            core.reply(now, from, request, result)
                        {
                            in_flight.push_back(transmit.token);
                        }
                    }
                }
                _ => {
                    let ok = input.u8()? & 1 == 1;
                    if let Some(token) = in_flight.pop_front() {
                        let result = if ok {
                            Ok(())
                        } else {
                            Err(coordinator_core::TransportError::Stalled(Duration::ZERO))
                        };
                        core.sent(now, token, result);
                    }
                }
            }
            Some(())
        })();
        if step.is_none() {
            break;
        }
        // As the driver does: hand out what the core has for the carrier
        // and for the application.
        while let Some(transmit) = core.poll_transmit() {
            in_flight.push_back(transmit.token);
        }
        if let Some(transmit) = core.poll_batch() {
            in_flight.push_back(transmit.token);
        }
        while let Some(output) = core.poll_output() {
            if let Output::Incoming {
                from,
                request: Some(request),
                ..
            } = output
                && requests.len() < 64
            {
                requests.push((from, request));
            }
        }
        if let Some(due) = core.poll_timeout()
            && due <= now
        {
            core.handle_timeout(now);
        }
    }
    core.close();
}

/// Reads frames off a byte stream, as the listener does on an accepted
/// connection once the handshake is done, until the stream or a frame ends it.
pub fn frames(data: &[u8]) {
    block_on(async {
        // The listener's limits, checked before a body is read, with the
        // largest `maxMessageSize` a node accepts: a frame that only
        // announces a large body must not make it reserve that much
        // (libFuzzer's malloc limit catches it).
        let limit = |kind: FrameType| match kind {
            FrameType::Message => 64 * 1024 * 1024 + 64,
            FrameType::SyncRequest => 1 << 20,
            _ => 1024,
        };
        let mut frames = FramedRead::new(data, FrameDecoder::new(limit));
        for _ in 0..1024 {
            let Some(Ok((kind, body))) = frames.next().await else {
                return;
            };
            match kind {
                FrameType::Probe => {
                    let _ = swim::decode_probe(&body);
                }
                FrameType::SyncRequest | FrameType::SyncReply => {
                    let _ = swim::decode_state(&body);
                }
                _ => {}
            }
        }
    });
}

/// A stream that reads a script and swallows what is written.
struct Scripted<'a> {
    input: &'a [u8],
}

impl AsyncRead for Scripted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = buf.remaining().min(self.input.len());
        let (head, rest) = self.input.split_at(n);
        buf.put_slice(head);
        self.input = rest;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7911))
}

/// The key handshake, both sides, against a peer that says what the input
/// says: the first byte picks the side (and the exporter the proofs bind).
pub fn handshake(data: &[u8]) {
    let Some((&first, script)) = data.split_first() else {
        return;
    };
    let key = AuthKey::derive(CLUSTER_KEY.as_bytes(), CLUSTER);
    let exporter = [first; 32];
    let hello = Hello::new(1, 10, addr());
    let mut stream = Scripted { input: script };
    block_on(async {
        let _ = if first & 1 == 0 {
            handshake::server(&mut stream, &key, &exporter, &hello).await
        } else {
            handshake::client(&mut stream, &key, &exporter, &hello).await
        };
    });
}

/// One UDP datagram, opened as the gossip opens it (authenticated first), and
/// its body decoded as if it had been authenticated (what a sender with the
/// key controls).
pub fn gossip(data: &[u8]) {
    let mut codec = GossipCodec::new(AuthKey::gossip_key(CLUSTER_KEY.as_bytes(), CLUSTER));
    let _ = codec.open(data);
    let _ = swim::decode_body(data);
}

/// Operations of the `swim` target.
pub mod swim_op {
    /// `from body:bytes`: a datagram's authenticated body, from a member's address.
    pub const BODY: u8 = 0;
    /// `datagram:bytes`: a whole datagram, sealed or not.
    pub const DATAGRAM: u8 = 1;
    /// `from run probe:bytes`: a probe over TCP from a member.
    pub const STREAM_PROBE: u8 = 2;
    /// `from probe:bytes`: the answer to a probe over TCP.
    pub const STREAM_ACK: u8 = 3;
    /// `state:bytes`: a full state from a state exchange.
    pub const STATE: u8 = 4;
    /// `id run`: a connection from a member was accepted.
    pub const CONTACT: u8 = 5;
    /// `id`: a connection from a member closed.
    pub const LOST: u8 = 6;
    /// `ms:u16`: time passes.
    pub const WAIT: u8 = 7;
    /// This node leaves.
    pub const LEAVE: u8 = 8;
    pub const COUNT: u8 = 9;
}

/// The address of member `n` in the `swim` target (node 1 is at
/// 127.0.0.1; others at 127.0.0.2 to 127.0.0.9).
pub fn member_addr(n: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, n % 8 + 2], 7911))
}

/// A sequence of inputs to one gossip state machine (see [`swim_op`]):
/// datagrams, probes and states from members with the key, connections, and
/// the time. Every datagram it makes must fit in one.
pub fn swim(data: &[u8]) {
    use swim_op::*;
    let mut input = Input::new(data);
    let mut now = Instant::now();
    let config = SwimConfig::from_timing(
        Duration::from_millis(250),
        Duration::from_millis(750),
        Duration::from_millis(1250),
    );
    let mut node = Swim::new(config, 1, 10, addr(), vec![member_addr(0)], now, 1);
    let mut codec = GossipCodec::new(AuthKey::gossip_key(CLUSTER_KEY.as_bytes(), CLUSTER));
    for _ in 0..512 {
        let Some(op) = input.u8() else { break };
        let step = (|| -> Option<()> {
            match op % COUNT {
                BODY => {
                    let from = input.u8()?;
                    if let Ok((_, packet)) = swim::decode_body(input.bytes()?) {
                        node.handle_packet(now, member_addr(from), packet);
                    }
                }
                DATAGRAM => {
                    if let Ok(packet) = codec.open(input.bytes()?) {
                        let from = member_addr((packet.from % 8) as u8);
                        node.handle_packet(now, from, packet);
                    }
                }
                STREAM_PROBE => {
                    let (from, run) = (input.u8()?, input.u8()?);
                    if let Ok((_, update)) = swim::decode_probe(input.bytes()?) {
                        let _ = node.stream_probe(
                            now,
                            u64::from(from % 8 + 2),
                            u64::from(run % 3 + 10),
                            member_addr(from),
                            update,
                        );
                    }
                }
                STREAM_ACK => {
                    let from = input.u8()?;
                    if let Ok((seq, update)) = swim::decode_probe(input.bytes()?) {
                        node.stream_ack(now, u64::from(from % 8 + 2), seq, update);
                    }
                }
                STATE => {
                    if let Ok(updates) = swim::decode_state(input.bytes()?) {
                        node.merge_state(now, updates);
                    }
                }
                CONTACT => {
                    let (id, run) = (input.u8()?, input.u8()?);
                    node.contact(
                        now,
                        u64::from(id % 8 + 2),
                        u64::from(run % 3 + 10),
                        member_addr(id),
                    );
                }
                LOST => node.connection_lost(now, u64::from(input.u8()? % 8 + 2)),
                WAIT => {
                    now += Duration::from_millis(u64::from(input.u16()?) % 3_000);
                    node.tick(now);
                }
                _ => node.leave(),
            }
            Some(())
        })();
        if step.is_none() {
            break;
        }
        // What the driver does with the outputs: seal the datagrams (each
        // must fit in one), encode the probes and states.
        for output in node.drain_outputs() {
            match output {
                swim::Output::Send { packet, .. } => {
                    let datagram = codec.seal(&packet);
                    assert!(
                        datagram.len() <= swim::MAX_DATAGRAM,
                        "a gossip datagram of {} bytes",
                        datagram.len()
                    );
                }
                swim::Output::StreamProbe { seq, update, .. } => {
                    let _ = swim::encode_probe(seq, &update);
                }
                _ => {}
            }
        }
        let _ = swim::encode_state(&node.full_state());
    }
}

/// A Raft request or reply as it arrives in a coordinator message.
pub fn raft_wire(data: &[u8]) {
    use coordinator_openraft::wire;
    use openraft::error::{Fatal, RaftError};
    use openraft::raft::{
        AppendEntriesResponse, SnapshotResponse, TransferLeaderResponse, VoteResponse,
    };
    use raft_kv::KvConfig;
    let _ = wire::decode_request::<KvConfig>(data);
    let _ =
        wire::decode_reply::<Result<AppendEntriesResponse<KvConfig>, RaftError<KvConfig>>>(data);
    let _ = wire::decode_reply::<Result<VoteResponse<KvConfig>, RaftError<KvConfig>>>(data);
    let _ = wire::decode_reply::<Result<Option<SnapshotResponse<KvConfig>>, Fatal<KvConfig>>>(data);
    let _ = wire::decode_reply::<Result<TransferLeaderResponse<KvConfig>, Fatal<KvConfig>>>(data);
}

/// A configuration file as an operator wrote it, read as JSON, TOML and
/// YAML (with Stalwart's and the legacy forms, secrets and durations), and
/// the text as a duration. Secrets are not resolved: that reads files and
/// the environment, which an input must not choose.
pub fn config(data: &[u8]) {
    use coordinator_core::config::CoordinatorConfig;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = CoordinatorConfig::from_json(text);
    let _ = CoordinatorConfig::from_toml(text);
    let _ = CoordinatorConfig::from_yaml(text);
    let _ = coordinator_core::config::duration::parse_duration(text);
}

/// Runs a future that never waits for anything outside it to completion.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(std::task::Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
    panic!("a future over in-memory bytes did not finish");
}
