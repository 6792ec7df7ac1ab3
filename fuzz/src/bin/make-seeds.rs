//! Writes the seed corpora of the fuzz targets (`fuzz/corpus/<target>/`) from
//! real traffic: the frames two engine cores exchange, the datagrams and
//! states three gossip state machines exchange, a real key handshake, real
//! Raft requests and replies, and the configuration files of the tests and
//! the README. Sealed with the targets' cluster key, so that fuzzing starts
//! past authentication.
//!
//!     cargo run -p coordinator-fuzz --bin make-seeds
//!
//! Deterministic apart from nonces and the handshake's random values; the
//! seeds are kept in the repository, so run it only when a format changes.

use bytes::Bytes;
use coordinator_core::Settings;
use coordinator_core::engine::core::{Broadcasting, Core, Output, Sending, Transmit};
use coordinator_fuzz::{CLUSTER, CLUSTER_KEY, Records, engine_op, member_addr, swim_op};
use coordinator_native::frame::{FrameType, write_frame};
use coordinator_native::handshake::{self, AuthKey, Hello};
use coordinator_native::swim::{self, GossipCodec, Output as SwimOutput, Swim, SwimConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut written = BTreeMap::new();
    let mut put = |target: &str, name: &str, data: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
        *written.entry(target.to_string()).or_insert(0) += 1;
    };
    let (frames, engine_seeds) = engine_traffic();
    for (i, frame) in frames.iter().enumerate().take(24) {
        put("envelope", &format!("frame-{i:02}"), frame);
    }
    for (name, seed) in engine_seeds {
        put("engine", &name, &seed);
    }
    put("frames", "stream", &native_stream(&frames));
    for (name, transcript) in handshake_transcripts() {
        put("handshake", &name, &transcript);
    }
    let (datagrams, bodies, swim_seeds) = gossip_traffic();
    for (i, datagram) in datagrams.iter().enumerate().take(16) {
        put("gossip", &format!("datagram-{i:02}"), datagram);
    }
    for (i, body) in bodies.iter().enumerate().take(8) {
        put("gossip", &format!("body-{i:02}"), body);
    }
    for (name, seed) in swim_seeds {
        put("swim", &name, &seed);
    }
    for (name, bytes) in raft_messages() {
        put("raft_wire", &name, &bytes);
    }
    for (name, text) in configs() {
        put("config", &name, text.as_bytes());
    }
    for (target, count) in written {
        println!("{target}: {count} seeds");
    }
}

fn settings(id: u64) -> Settings {
    Settings::new(id).cluster(CLUSTER).cluster_key(CLUSTER_KEY)
}

/// Everything a core has for the carrier now.
fn drain(core: &mut Core, into: &mut Vec<Transmit>) {
    while let Some(transmit) = core.poll_transmit() {
        into.push(transmit);
    }
    if let Some(transmit) = core.poll_batch() {
        into.push(transmit);
    }
    while core.poll_output().is_some() {}
}

/// Node 2's frame `transmit` reaches node 1: kept as a seed frame and as a
/// record of what node 1 received, and reported sent.
fn carry(
    a: &mut Core,
    b: &mut Core,
    now: Instant,
    transmit: Transmit,
    frames: &mut Vec<Bytes>,
    records: &mut Records,
) {
    frames.push(transmit.frame.clone());
    records.op(engine_op::FRAME).bytes(&transmit.frame);
    b.handle_frame(now, transmit.frame);
    a.sent(now, transmit.token, Ok(()));
}

/// Node 2 (incarnation 1) and node 1 meet, then node 2 broadcasts (alone and
/// in batches), sends, asks; node 1 answers. Returns every frame node 2 sent,
/// and engine seeds: what node 1 received, as records.
fn engine_traffic() -> (Vec<Bytes>, Vec<(String, Vec<u8>)>) {
    let start = Instant::now();
    let mut a = Core::new(&settings(2), 1, false);
    let mut b = Core::new(&settings(1), 7, false);
    a.start(start);
    b.start(start);
    let mut frames = Vec::new();
    let mut records = Records::default();
    let mut now = start;
    let exchange = |a: &mut Core,
                    b: &mut Core,
                    now: Instant,
                    frames: &mut Vec<Bytes>,
                    records: &mut Records| {
        for _ in 0..4 {
            let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
            drain(a, &mut from_a);
            drain(b, &mut from_b);
            if from_a.is_empty() && from_b.is_empty() {
                break;
            }
            for transmit in from_a {
                carry(a, b, now, transmit, frames, records);
            }
            for transmit in from_b {
                a.handle_frame(now, transmit.frame);
                b.sent(now, transmit.token, Ok(()));
                records.op(engine_op::SENT).u8(1);
            }
        }
    };
    exchange(&mut a, &mut b, now, &mut frames, &mut records);
    // Broadcasts: one alone, then a burst that batches behind it.
    let mut pending = None;
    for i in 0..12u8 {
        let payload = Bytes::from(vec![i; 16 + usize::from(i) * 8]);
        let topic = ["a", "topic", "t/with/levels"][usize::from(i % 3)];
        match a.broadcast(now, topic, &payload).unwrap() {
            Broadcasting::Alone { transmit, .. } => pending = Some(transmit),
            Broadcasting::Queued { .. } | Broadcasting::Full => {}
        }
    }
    if let Some(transmit) = pending.take() {
        carry(&mut a, &mut b, now, transmit, &mut frames, &mut records);
    }
    exchange(&mut a, &mut b, now, &mut frames, &mut records);
    for i in 0..3u8 {
        if let Ok(Sending::Now { transmit, .. }) = a.send(now, 1, Bytes::from(vec![b'd', i])) {
            carry(&mut a, &mut b, now, transmit, &mut frames, &mut records);
        }
        if let Ok((_, Sending::Now { transmit, .. })) = a.request(
            now,
            1,
            Bytes::from_static(b"question"),
            Duration::from_secs(1),
        ) {
            carry(&mut a, &mut b, now, transmit, &mut frames, &mut records);
        }
        // Node 1 answers what it was asked.
        while let Some(output) = b.poll_output() {
            if let Output::Incoming {
                from,
                request: Some(request),
                ..
            } = output
                && let Ok(Sending::Now { transmit, .. }) =
                    b.reply(now, from, request, Ok(Bytes::from_static(b"answer")))
            {
                a.handle_frame(now, transmit.frame);
                b.sent(now, transmit.token, Ok(()));
            }
        }
        now += Duration::from_millis(300);
        records.op(engine_op::WAIT).u16(300);
        a.handle_timeout(now);
        b.handle_timeout(now);
        exchange(&mut a, &mut b, now, &mut frames, &mut records);
    }
    // Messages to one node behind one the carrier still has: they go out
    // together, as one `DirectBatch`, once it is done.
    let mut first = None;
    for i in 0..5u8 {
        let payload = Bytes::from(vec![b'm', i]);
        let sending = if i % 2 == 0 {
            a.send(now, 1, payload)
        } else {
            a.request(now, 1, payload, Duration::from_secs(1))
                .map(|(_, sending)| sending)
        };
        if let Ok(Sending::Now { transmit, .. }) = sending {
            first = Some(transmit);
        }
    }
    if let Some(transmit) = first {
        carry(&mut a, &mut b, now, transmit, &mut frames, &mut records);
    }
    exchange(&mut a, &mut b, now, &mut frames, &mut records);
    // A heartbeat gap long enough for a suspicion, then a departure.
    now += Duration::from_millis(2000);
    records.op(engine_op::WAIT).u16(2000);
    a.handle_timeout(now);
    b.handle_timeout(now);
    if let Ok(transmit) = a.leave() {
        frames.push(transmit.frame.clone());
        records.op(engine_op::FRAME).bytes(&transmit.frame);
    }
    let received = records.0.clone();
    // The same, with membership from the carrier's failure detector (a first
    // byte with its high bit set; 0x84 is still a FRAME record).
    let mut reported = received.clone();
    reported[0] = 0x84;

    // The application's side of node 1, with peers of every kind.
    let mut app = Records::default();
    app.op(engine_op::PEER)
        .u8(6) // Join
        .u8(0)
        .u8(0)
        .u8(0)
        .u8(0)
        .u16(0)
        .u16(0)
        .u8(0)
        .bytes(b"");
    app.op(engine_op::MEMBER).u8(1).u8(0).u8(0);
    app.op(engine_op::BROADCAST).u8(1).bytes(b"hello");
    app.op(engine_op::SENT).u8(1);
    app.op(engine_op::REQUEST).u8(1).u8(50).bytes(b"ask");
    app.op(engine_op::PEER)
        .u8(3) // Reply
        .u8(0)
        .u8(0)
        .u8(1)
        .u8(0)
        .u16(1)
        .u16(1)
        .u8(0)
        .bytes(b"answer");
    app.op(engine_op::BATCH).u8(0).u8(0).u16(1).u8(3);
    for i in 0..3u8 {
        app.u8(i).bytes(&[i; 5]);
    }
    app.op(engine_op::PEER)
        .u8(0)
        .u8(0)
        .u8(0)
        .u8(0)
        .u8(0)
        .u16(9)
        .u16(0)
        .u8(1)
        .bytes(b"after a gap");
    app.op(engine_op::WAIT).u16(1000);
    app.op(engine_op::TAMPERED)
        .u16(20)
        .u8(0x40)
        .u8(engine_op::PEER)
        .u8(1)
        .u8(1)
        .u8(0)
        .u8(1)
        .u8(0)
        .u16(1)
        .u16(0)
        .u8(0)
        .bytes(b"direct");
    app.op(engine_op::LINK).u8(0);
    app.op(engine_op::LINK).u8(1);
    app.op(engine_op::MEMBER).u8(1).u8(0).u8(2);
    app.op(engine_op::WAIT).u16(3000);
    (
        frames,
        vec![
            ("received".to_string(), received),
            ("received-carrier-reports".to_string(), reported),
            ("application".to_string(), app.0),
        ],
    )
}

/// A connection's byte stream: envelopes, keep-alives, a probe and a state.
fn native_stream(frames: &[Bytes]) -> Vec<u8> {
    let update = swim::Update::own(2, 11, 3, swim::State::Alive, member_addr(0));
    let mut out = Vec::new();
    block_on(async {
        for frame in frames.iter().take(6) {
            write_frame(&mut out, FrameType::Message, frame)
                .await
                .unwrap();
        }
        write_frame(&mut out, FrameType::Ping, &[]).await.unwrap();
        write_frame(&mut out, FrameType::Pong, &6u64.to_be_bytes())
            .await
            .unwrap();
        write_frame(&mut out, FrameType::Probe, &swim::encode_probe(5, &update))
            .await
            .unwrap();
        write_frame(
            &mut out,
            FrameType::SyncRequest,
            &swim::encode_state(std::slice::from_ref(&update)),
        )
        .await
        .unwrap();
    });
    out
}

/// A stream that records what one side writes.
struct Recorder<S> {
    inner: S,
    written: Vec<u8>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Recorder<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Recorder<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let result = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = result {
            self.written.extend_from_slice(&buf[..n]);
        }
        result
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A real handshake between a client and a server with the key: what each
/// wrote is the script of the other side in the `handshake` target (first
/// byte: even plays against the server, odd against the client; the
/// exporter is 32 copies of it).
fn handshake_transcripts() -> Vec<(String, Vec<u8>)> {
    let key = AuthKey::derive(CLUSTER_KEY.as_bytes(), CLUSTER);
    let addr = SocketAddr::from(([127, 0, 0, 1], 7911));
    let mut seeds = Vec::new();
    for first in [0u8, 1u8] {
        let exporter = [first; 32];
        let (a, b) = tokio::io::duplex(4096);
        let mut client = Recorder {
            inner: a,
            written: Vec::new(),
        };
        let mut server = Recorder {
            inner: b,
            written: Vec::new(),
        };
        let (client_hello, server_hello) = (Hello::new(2, 11, addr), Hello::new(1, 10, addr));
        block_on(async {
            let (c, s) = tokio::join!(
                handshake::client(&mut client, &key, &exporter, &client_hello),
                handshake::server(&mut server, &key, &exporter, &server_hello),
            );
            c.unwrap();
            s.unwrap();
        });
        let script = if first == 0 {
            client.written
        } else {
            server.written
        };
        let mut seed = vec![first];
        seed.extend_from_slice(&script);
        seeds.push((format!("transcript-{first}"), seed));
    }
    seeds
}

/// Three gossip state machines (nodes 1, 2, 3) meet and run, then node 3
/// stops. Returns the datagrams sealed for node 1, their bodies, and `swim`
/// seeds: what node 1 received, as records.
/// Named seeds of one target.
type Seeds = Vec<(String, Vec<u8>)>;

fn gossip_traffic() -> (Vec<Vec<u8>>, Vec<Vec<u8>>, Seeds) {
    const IDS: [u64; 3] = [1, 2, 3];
    const RUNS: [u64; 3] = [10, 11, 12];
    let config = SwimConfig::from_timing(
        Duration::from_millis(250),
        Duration::from_millis(750),
        Duration::from_millis(1250),
    );
    let start = Instant::now();
    let key = AuthKey::gossip_key(CLUSTER_KEY.as_bytes(), CLUSTER);
    let one = SocketAddr::from(([127, 0, 0, 1], 7911));
    let addrs = [one, member_addr(0), member_addr(1)];
    let mut nodes = [
        Swim::new(config, 1, 10, one, vec![member_addr(0)], start, 1),
        Swim::new(config, 2, 11, member_addr(0), vec![], start, 2),
        Swim::new(
            config,
            3,
            12,
            member_addr(1),
            vec![member_addr(0)],
            start,
            3,
        ),
    ];
    let mut codecs: Vec<GossipCodec> = (0..3).map(|_| GossipCodec::new(key)).collect();
    let mut counters = [0u64; 3];
    let (mut datagrams, mut bodies) = (Vec::new(), Vec::new());
    let mut records = Records::default();
    let mut alive = [true; 3];
    let mut now = start;
    for step in 0..40 {
        if step == 24 {
            alive[2] = false;
        }
        now += Duration::from_millis(100);
        records.op(swim_op::WAIT).u16(100);
        for (i, node) in nodes.iter_mut().enumerate() {
            if alive[i] {
                node.tick(now);
            }
        }
        for from in 0..3 {
            if !alive[from] {
                continue;
            }
            let outputs: Vec<SwimOutput> = nodes[from].drain_outputs().collect();
            for output in outputs {
                match output {
                    SwimOutput::Send { to, packet } => {
                        let Some(dest) = addrs.iter().position(|a| *a == to) else {
                            continue;
                        };
                        if !alive[dest] {
                            continue;
                        }
                        let datagram = codecs[from].seal(&packet);
                        counters[from] += 1;
                        if dest == 0 {
                            let body = swim::encode_body(counters[from], &packet);
                            // `from` as the target reads it: member_addr(from - 2 + …).
                            records.op(swim_op::BODY).u8(from as u8 - 1).bytes(&body);
                            datagrams.push(datagram);
                            bodies.push(body);
                        }
                        nodes[dest].handle_packet(now, addrs[from], packet);
                    }
                    SwimOutput::Sync { addr } => {
                        let Some(dest) = addrs.iter().position(|a| *a == addr) else {
                            continue;
                        };
                        if !alive[dest] {
                            continue;
                        }
                        let mine = nodes[from].full_state();
                        let theirs = nodes[dest].full_state();
                        nodes[dest].merge_state(now, mine.clone());
                        nodes[from].merge_state(now, theirs.clone());
                        if from == 0 {
                            records
                                .op(swim_op::STATE)
                                .bytes(&swim::encode_state(&theirs));
                        } else if dest == 0 {
                            records.op(swim_op::STATE).bytes(&swim::encode_state(&mine));
                        }
                    }
                    SwimOutput::StreamProbe {
                        target,
                        seq,
                        update,
                    } => {
                        let Some(dest) = IDS.iter().position(|&id| id == target) else {
                            continue;
                        };
                        if !alive[dest] {
                            continue;
                        }
                        let (id, run, addr) = (IDS[from], RUNS[from], addrs[from]);
                        let answer = nodes[dest].stream_probe(now, id, run, addr, update.clone());
                        if dest == 0 {
                            records
                                .op(swim_op::STREAM_PROBE)
                                .u8(from as u8 - 1)
                                .u8((run - 10) as u8)
                                .bytes(&swim::encode_probe(seq, &update));
                        }
                        nodes[from].stream_ack(now, target, seq, answer.clone());
                        if from == 0 {
                            records
                                .op(swim_op::STREAM_ACK)
                                .u8(dest as u8 - 1)
                                .bytes(&swim::encode_probe(seq, &answer));
                        }
                    }
                    SwimOutput::Report { .. } => {}
                }
            }
        }
    }
    let mut churn = Records::default();
    churn.op(swim_op::CONTACT).u8(0).u8(1);
    churn.op(swim_op::WAIT).u16(300);
    churn.op(swim_op::LOST).u8(0);
    churn.op(swim_op::WAIT).u16(2000);
    churn.op(swim_op::CONTACT).u8(0).u8(2);
    churn.op(swim_op::LEAVE);
    for datagram in datagrams.iter().take(4) {
        churn.op(swim_op::DATAGRAM).bytes(datagram);
    }
    (
        datagrams,
        bodies,
        vec![
            ("three-nodes".to_string(), records.0),
            ("churn".to_string(), churn.0),
        ],
    )
}

/// Real Raft requests and replies of the raft-kv store, as coordinator
/// messages carry them.
fn raft_messages() -> Vec<(String, Vec<u8>)> {
    use coordinator_openraft::wire::{Rpc, SnapshotPiece, encode_reply, encode_request};
    use openraft::alias::{EntryOf, SnapshotMetaOf};
    use openraft::error::{Fatal, RaftError};
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
    };
    use openraft::{EntryPayload, Vote};
    use raft_kv::{Command, KvConfig};
    let vote = Vote::new_committed(3, 1);
    let log_id = |index| openraft::testing::log_id::<KvConfig>(3, 1, index);
    let entries: Vec<EntryOf<KvConfig>> = (1..4)
        .map(|index| EntryOf::<KvConfig> {
            log_id: log_id(index),
            payload: EntryPayload::Normal(Command::Set {
                key: format!("key{index}"),
                value: "value".into(),
            }),
        })
        .collect();
    let append = AppendEntriesRequest::<KvConfig> {
        vote,
        prev_log_id: Some(log_id(0)),
        entries,
        leader_commit: Some(log_id(1)),
    };
    let request_vote = VoteRequest::<KvConfig>::new(Vote::new(4, 2), Some(log_id(3)));
    let piece = SnapshotPiece {
        vote,
        meta: SnapshotMetaOf::<KvConfig> {
            last_log_id: Some(log_id(3)),
            last_membership: Default::default(),
        },
        offset: 0,
        data: b"snapshot bytes".to_vec(),
        done: true,
    };
    let append_reply: Result<AppendEntriesResponse<KvConfig>, RaftError<KvConfig>> =
        Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(2))));
    let vote_reply: Result<VoteResponse<KvConfig>, RaftError<KvConfig>> =
        Ok(VoteResponse::new(Vote::new(4, 2), Some(log_id(3)), true));
    let snapshot_reply: Result<Option<SnapshotResponse<KvConfig>>, Fatal<KvConfig>> =
        Ok(Some(SnapshotResponse::new(vote)));
    vec![
        (
            "append-entries".into(),
            encode_request(Rpc::AppendEntries, &append)
                .unwrap()
                .to_vec(),
        ),
        (
            "vote".into(),
            encode_request(Rpc::Vote, &request_vote).unwrap().to_vec(),
        ),
        (
            "pre-vote".into(),
            encode_request(Rpc::PreVote, &request_vote)
                .unwrap()
                .to_vec(),
        ),
        (
            "snapshot-piece".into(),
            encode_request(Rpc::Snapshot, &piece).unwrap().to_vec(),
        ),
        (
            "append-reply".into(),
            encode_reply(&append_reply).unwrap().to_vec(),
        ),
        (
            "vote-reply".into(),
            encode_reply(&vote_reply).unwrap().to_vec(),
        ),
        (
            "snapshot-reply".into(),
            encode_reply(&snapshot_reply).unwrap().to_vec(),
        ),
    ]
}

/// Configuration files: Stalwart's, the tests' and README's examples, in
/// each of the formats a node reads.
fn configs() -> Vec<(String, String)> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = Vec::new();
    let stalwart = repo.join("tests/data/stalwart");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&stalwart)
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for path in files {
        if path.extension().is_some_and(|e| e == "json") {
            let name = format!("stalwart-{}", path.file_name().unwrap().to_string_lossy());
            out.push((name, std::fs::read_to_string(&path).unwrap()));
        }
    }
    out.push((
        "native.json".into(),
        r#"{"@type": "Native", "nodeId": 1, "cluster": "mail",
 "clusterKey": {"@type": "Value", "secret": "change me"},
 "bindAddr": "0.0.0.0", "port": 7911, "seedNodes": ["10.0.0.1:7911", "10.0.0.2:7911"],
 "heartbeatInterval": "250ms", "suspectTimeout": 750, "deadTimeout": "1.25s"}"#
            .into(),
    ));
    out.push((
        "nats.toml".into(),
        "\"@type\" = \"Nats\"\nnodeId = 2\naddresses = [\"127.0.0.1:4222\"]\n\n[clusterKey]\n\"@type\" = \"EnvironmentVariable\"\nvariableName = \"CLUSTER_KEY\"\n".into(),
    ));
    out.push((
        "redis.yaml".into(),
        "\"@type\": Redis\nnodeId: 3\nurl: redis://127.0.0.1:6379\ntimeout: 5s\nclusterKey:\n  \"@type\": File\npath: /etc/key\n".into(),
    ));
    out.push(("legacy.yaml".into(), LEGACY_YAML.into()));
    out.push(("legacy.toml".into(), LEGACY_TOML.into()));
    out.push(("duration".into(), "1h 30m 250ms".into()));
    out
}

/// The flat keys of the older Stalwart JMAP server, in both formats.
const LEGACY_YAML: &str = "rpc-bind-addr: 0.0.0.0\nrpc-port: 7911\nrpc-advertise-addr: 10.0.0.1:7911\nrpc-key: secret\nrpc-tls-domain: false\nrpc-timeout: 1000\nrpc-retries-max: 5\nrpc-backoff-max: 180000\nrpc-inactivity-timeout: 300000\nrpc-frame-max: 1048576\nseed-nodes: 10.0.0.2:7911;10.0.0.3:7911\npeer-ping-interval: 500\nraft-election-timeout: 1000\njmap-url: https://mail.example.org\n";
const LEGACY_TOML: &str =
    "rpc-port = 7911\nrpc-tls-domain = false\nrpc-key = \"k\"\nseed-nodes = \"10.0.0.2:7911\"\n";

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
}
