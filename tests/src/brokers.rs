//! Real broker processes for the carrier tests: each on a free loopback port,
//! waited for until it answers, and killable and restartable mid-test on the
//! same port. Tests never use a broker that happens to run on a standard port.
//!
//! `COORDINATOR_TEST_NATS_URL` (and the like, see README.md) make the
//! conformance suite use an external broker instead; tests that kill a broker
//! always start their own.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a broker may take to answer after it starts.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A broker program and how to start it on a port.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Nats,
    Redis,
    /// A Redis server that speaks only TLS, with a certificate of a test
    /// authority of its own (`ca.pem` in its directory, see [`Broker::dir`]).
    RedisTls,
    /// One node of a Redis Cluster (see [`RedisCluster`]).
    RedisClusterNode,
    /// One node of a Redis Cluster that speaks only TLS, to clients and to
    /// the other nodes, with the certificate of [`shared_authority`].
    RedisClusterTlsNode,
    /// Tansu, a broker that speaks the Apache Kafka API, keeping its log in
    /// memory (a restart loses it, as a crashed disk-less broker would).
    Kafka,
    /// The Zenoh router, `zenohd`.
    ZenohRouter,
    /// A Redis Sentinel (see [`RedisSentinels`]); what it monitors is given
    /// as extra arguments.
    RedisSentinel,
}

impl Kind {
    /// The URL scheme of the broker's clients.
    pub fn scheme(self) -> &'static str {
        match self {
            Kind::Nats => "nats",
            Kind::Redis | Kind::RedisClusterNode | Kind::RedisSentinel => "redis",
            Kind::RedisTls | Kind::RedisClusterTlsNode => "rediss",
            Kind::Kafka => "kafka",
            Kind::ZenohRouter => "tcp",
        }
    }

    /// How the broker's clients name the broker at `addr`.
    pub fn url(self, addr: SocketAddr) -> String {
        match self {
            Kind::Kafka => addr.to_string(),
            Kind::ZenohRouter => format!("tcp/{addr}"),
            _ => format!("{}://{addr}", self.scheme()),
        }
    }

    /// The variable naming an external broker of this kind.
    pub fn variable(self) -> &'static str {
        match self {
            Kind::Nats => "COORDINATOR_TEST_NATS_URL",
            Kind::Redis => "COORDINATOR_TEST_REDIS_URL",
            // Its tests use the authority of their own server.
            Kind::RedisTls => "COORDINATOR_TEST_REDIS_TLS_URL",
            // Tests on a TLS cluster count its commands: always their own.
            Kind::RedisClusterNode | Kind::RedisClusterTlsNode => {
                "COORDINATOR_TEST_REDIS_CLUSTER_URLS"
            }
            Kind::Kafka => "COORDINATOR_TEST_KAFKA_BROKERS",
            Kind::ZenohRouter => "COORDINATOR_TEST_ZENOH_ROUTER",
            Kind::RedisSentinel => "COORDINATOR_TEST_REDIS_SENTINEL_URLS",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Kind::Nats => "nats-server",
            Kind::Redis | Kind::RedisTls | Kind::RedisClusterNode | Kind::RedisClusterTlsNode => {
                "redis-server"
            }
            Kind::Kafka => "tansu",
            Kind::ZenohRouter => "zenohd",
            Kind::RedisSentinel => "redis-sentinel",
        }
    }

    /// Whether the broker listens on a second port of its own (a Redis
    /// Cluster node's bus), which the test picks too: Redis's default,
    /// port + 10000, can be any process's ephemeral port.
    fn has_bus(self) -> bool {
        matches!(self, Kind::RedisClusterNode | Kind::RedisClusterTlsNode)
    }

    fn args(self, port: u16, bus: u16, dir: &std::path::Path) -> Vec<String> {
        let port = port.to_string();
        match self {
            Kind::Nats => {
                // A payload limit above the engine's (1 MiB), so that the
                // engine's own size check is what the tests exercise.
                let file = dir.join("nats.conf");
                std::fs::write(
                    &file,
                    format!("listen: 127.0.0.1:{port}\nmax_payload: 4MB\n"),
                )
                .expect("a nats-server configuration file");
                vec!["-c".into(), file.display().to_string()]
            }
            Kind::RedisClusterTlsNode => {
                let mut args = Kind::RedisClusterNode.args(0, bus, dir);
                args.extend(tls_args(port, &shared_authority()));
                args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from));
                args
            }
            Kind::RedisTls => {
                let mut args = Kind::Redis.args(0, bus, dir);
                args.extend(tls_args(port, &test_authority(dir)));
                args
            }
            Kind::RedisClusterNode => {
                let mut args = Kind::Redis.args(port.parse().expect("a port"), bus, dir);
                args.extend(["--cluster-port".into(), bus.to_string()]);
                args.extend(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        // Fast failover for tests.
                        "--cluster-node-timeout",
                        "1000",
                        "--repl-diskless-sync",
                        "yes",
                        "--repl-diskless-sync-delay",
                        "0",
                    ]
                    .map(String::from),
                );
                args
            }
            Kind::Kafka => {
                let url = format!("tcp://127.0.0.1:{port}");
                vec![
                    "broker".into(),
                    "--listener-url".into(),
                    url.clone(),
                    "--advertised-listener-url".into(),
                    url,
                    "--storage-engine".into(),
                    "memory://tansu/".into(),
                ]
            }
            Kind::ZenohRouter => vec![
                "--no-multicast-scouting".into(),
                "--listen".into(),
                format!("tcp/127.0.0.1:{port}"),
                // No REST plugin, no admin space: only the router.
                "--cfg".into(),
                "plugins_loading/enabled:false".into(),
            ],
            Kind::RedisSentinel => {
                // A sentinel rewrites its configuration file: it must have one.
                let file = dir.join("sentinel.conf");
                if !file.exists() {
                    std::fs::write(
                        &file,
                        format!("bind 127.0.0.1\nport {port}\ndir {}\n", dir.display()),
                    )
                    .expect("a sentinel configuration file");
                }
                vec![file.display().to_string()]
            }
            Kind::Redis => vec![
                "--bind".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port,
                "--save".into(),
                String::new(),
                "--appendonly".into(),
                "no".into(),
                "--dir".into(),
                dir.display().to_string(),
            ],
        }
    }

    /// Whether the broker on `addr` answers its protocol's hello.
    fn answers(self, addr: SocketAddr) -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let expected: &[u8] = match self {
            // NATS greets first.
            Kind::Nats => b"INFO",
            // An ApiVersions v0 request with correlation id 1: the answer
            // starts with its length, then the same correlation id.
            Kind::Kafka => {
                let request = [0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0xff, 0xff];
                if stream.write_all(&request).is_err() {
                    return false;
                }
                let mut answer = [0u8; 8];
                return stream.read_exact(&mut answer).is_ok() && answer[4..8] == [0, 0, 0, 1];
            }
            // A Zenoh router accepts the connection once it listens, and so
            // does a TLS server (the handshake is the client's test).
            Kind::ZenohRouter | Kind::RedisTls | Kind::RedisClusterTlsNode => return true,
            Kind::Redis | Kind::RedisClusterNode | Kind::RedisSentinel => {
                if stream.write_all(b"PING\r\n").is_err() {
                    return false;
                }
                b"+PONG"
            }
        };
        let mut buffer = [0u8; 5];
        stream.read_exact(&mut buffer[..expected.len()]).is_ok()
            && &buffer[..expected.len()] == expected
    }
}

/// A broker process this test owns (killed when dropped).
pub struct Broker {
    kind: Kind,
    port: u16,
    /// The second port of a kind that has one (see [`Kind::has_bus`]).
    bus: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Arguments after the kind's own (an authentication option, say).
    extra: Vec<String>,
}

/// How many ports a first start tries when the broker exits at once (its
/// port was free when picked, and another process took it since).
const PORTS_TRIED: usize = 3;

/// How many quick exits a first start waits through on one port.
const QUICK_EXITS: usize = 5;

impl Broker {
    /// Starts a broker on a free loopback port and waits until it answers.
    pub fn start(kind: Kind) -> Broker {
        Self::start_with(kind, &[])
    }

    /// [`Broker::start`] with `extra` after the kind's own arguments.
    pub fn start_with(kind: Kind, extra: &[&str]) -> Broker {
        let mut broker = Broker {
            kind,
            port: 0,
            bus: 0,
            dir: PathBuf::new(),
            child: None,
            extra: extra.iter().map(|arg| arg.to_string()).collect(),
        };
        let mut failures = Vec::new();
        for _ in 0..PORTS_TRIED {
            broker.take_ports();
            match broker.launch(Some(QUICK_EXITS)) {
                Ok(()) => return broker,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("{}", failures.join("\n"));
    }

    /// Picks fresh ports, and a directory named after them.
    fn take_ports(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        self.port = free_port();
        self.bus = if self.kind.has_bus() {
            std::iter::repeat_with(free_port)
                .find(|bus| *bus != self.port)
                .expect("a second free port")
        } else {
            0
        };
        self.dir = std::env::temp_dir().join(format!(
            "coordinator-test-{}-{}-{}",
            self.kind.program(),
            std::process::id(),
            self.port
        ));
        std::fs::create_dir_all(&self.dir).expect("a broker directory");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's own directory (its data, its certificates).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Kills the process at once (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same port and waits until it answers.
    pub fn restart(&mut self) {
        if let Err(failure) = self.launch(None) {
            panic!("{failure}");
        }
    }

    /// Starts the process on this broker's ports and waits until it answers.
    /// A process that exits at once is started again (a port just closed may
    /// not be free yet) until [`READY_WITHIN`] has passed or it has exited
    /// `give_up_after` times; then the error says why, with the end of the
    /// broker's own output.
    fn launch(&mut self, give_up_after: Option<usize>) -> Result<(), String> {
        self.kill();
        let log = self.dir.join("broker.log");
        let started = Instant::now();
        let mut exits = 0;
        loop {
            let output = std::fs::File::create(&log).expect("a broker log file");
            let child = Command::new(self.kind.program())
                .args(self.kind.args(self.port, self.bus, &self.dir))
                .args(&self.extra)
                .stdin(Stdio::null())
                .stdout(output.try_clone().expect("a broker log file"))
                .stderr(output)
                .spawn()
                .unwrap_or_else(|error| {
                    panic!(
                        "cannot run {} (scripts/test.sh installs it): {error}",
                        self.kind.program()
                    )
                });
            self.child = Some(child);
            while started.elapsed() < READY_WITHIN {
                if self.kind.answers(self.addr()) {
                    return Ok(());
                }
                if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                    exits += 1;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Quick exits on a first start mean the port is someone else's:
            // the caller picks another rather than waiting for it.
            if started.elapsed() >= READY_WITHIN || give_up_after.is_some_and(|most| exits >= most)
            {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = said.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                self.kill();
                return Err(format!(
                    "{} on port {}{} did not answer within {:?} ({exits} quick exits); it said: {}",
                    self.kind.program(),
                    self.port,
                    if self.kind.has_bus() {
                        format!(" (bus port {})", self.bus)
                    } else {
                        String::new()
                    },
                    started.elapsed(),
                    tail.join(" | ")
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// redis-server's arguments to speak only TLS on `port`.
fn tls_args(port: String, files: &TlsFiles) -> Vec<String> {
    vec![
        "--tls-port".into(),
        port,
        "--tls-cert-file".into(),
        files.cert.clone(),
        "--tls-key-file".into(),
        files.key.clone(),
        "--tls-ca-cert-file".into(),
        files.ca.clone(),
        "--tls-auth-clients".into(),
        "no".into(),
    ]
}

/// One test authority for the nodes of a TLS cluster (they must trust each
/// other), in a directory of this process's that the cluster removes when
/// it is dropped.
pub fn shared_authority() -> TlsFiles {
    let dir = shared_authority_dir();
    std::fs::create_dir_all(&dir).expect("a directory for the test authority");
    test_authority(&dir)
}

fn shared_authority_dir() -> PathBuf {
    std::env::temp_dir().join(format!("coordinator-test-authority-{}", std::process::id()))
}

/// The PEM files of a TLS server: its certificate and key, and the
/// authority that signed it.
pub struct TlsFiles {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// A test certificate authority and a certificate it signs for 127.0.0.1,
/// written into `dir` once (a restarted server keeps them).
fn test_authority(dir: &std::path::Path) -> TlsFiles {
    let path = |name: &str| dir.join(name).display().to_string();
    let files = TlsFiles {
        ca: path("ca.pem"),
        cert: path("server.pem"),
        key: path("server.key"),
    };
    if std::path::Path::new(&files.key).exists() {
        return files;
    }
    let ca_key = rcgen::KeyPair::generate().expect("a key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "coordinator test authority");
    let ca = ca.self_signed(&ca_key).expect("a CA certificate");
    let key = rcgen::KeyPair::generate().expect("a key");
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .expect("server parameters")
        .signed_by(&key, &ca, &ca_key)
        .expect("a server certificate");
    std::fs::write(&files.ca, ca.pem()).expect("ca.pem");
    std::fs::write(&files.cert, server.pem()).expect("server.pem");
    std::fs::write(&files.key, key.serialize_pem()).expect("server.key");
    files
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// An external broker's address from the environment, if one is set.
pub fn external(variable: &str) -> Option<String> {
    std::env::var(variable)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// A Redis Cluster of 3 masters with 1 replica each, all on loopback ports,
/// ready when every slot is served and every replica is in sync.
pub struct RedisCluster {
    pub nodes: Vec<Broker>,
    /// The authority of a cluster that speaks TLS.
    tls: Option<TlsFiles>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        Self::start_of(Kind::RedisClusterNode)
    }

    /// A cluster whose nodes speak only TLS, to clients and to each other.
    pub fn start_tls() -> RedisCluster {
        Self::start_of(Kind::RedisClusterTlsNode)
    }

    fn start_of(kind: Kind) -> RedisCluster {
        let nodes: Vec<Broker> = (0..6).map(|_| Broker::start(kind)).collect();
        let tls = matches!(kind, Kind::RedisClusterTlsNode).then(shared_authority);
        let mut create = Command::new("redis-cli");
        create.args(tls_flags(tls.as_ref()));
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(node.addr().to_string());
        }
        let output = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs (scripts/test.sh installs redis-tools)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = RedisCluster { nodes, tls };
        cluster.wait_until_ready();
        cluster
    }

    /// `tlsCaPath` for a cluster that speaks TLS.
    pub fn tls_ca(&self) -> Option<&str> {
        self.tls.as_ref().map(|files| files.ca.as_str())
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        redis_cli(self.tls.as_ref(), port, args)
    }

    /// `redis://127.0.0.1:PORT` of every node.
    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        self.nodes
            .iter()
            .map(|node| format!("{scheme}://{}", node.addr()))
            .collect()
    }

    /// Waits until every node says the cluster is ok and every replica's
    /// link to its master is up.
    pub fn wait_until_ready(&self) {
        let started = Instant::now();
        while started.elapsed() < READY_WITHIN {
            let ready = self.nodes.iter().all(|node| {
                let info = self.cli(node.port(), &["cluster", "info"]);
                let replication = self.cli(node.port(), &["info", "replication"]);
                info.contains("cluster_state:ok")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the Redis Cluster was not ready within {READY_WITHIN:?}");
    }

    /// How many `PUBLISH` commands each node has served so far.
    pub fn publish_calls(&self) -> Vec<u64> {
        self.calls("publish")
    }

    /// How many times each node has run `command` (lower case) so far.
    pub fn calls(&self, command: &str) -> Vec<u64> {
        self.command_stat(command, "calls")
    }

    /// How many times each node has refused `command` (an ACL, say).
    pub fn rejected_calls(&self, command: &str) -> Vec<u64> {
        self.command_stat(command, "rejected_calls")
    }

    /// Field `field` of `command`'s line in each node's `INFO commandstats`
    /// (`cmdstat_publish:calls=3,usec=…,rejected_calls=0,…`).
    fn command_stat(&self, command: &str, field: &str) -> Vec<u64> {
        let prefix = format!("cmdstat_{command}:");
        self.nodes
            .iter()
            .map(|node| {
                let stats = self.cli(node.port(), &["info", "commandstats"]);
                stats
                    .lines()
                    .find_map(|line| line.strip_prefix(prefix.as_str()))
                    .and_then(|rest| {
                        rest.split(',')
                            .find_map(|pair| pair.strip_prefix(field)?.strip_prefix('='))
                    })
                    .and_then(|value| value.trim().parse().ok())
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Runs `command` on every node (ACLs, say, which nodes do not share).
    pub fn on_every_node(&self, command: &[&str]) {
        for node in &self.nodes {
            let answer = self.cli(node.port(), command);
            assert_eq!(answer.trim(), "OK", "{command:?} at {}", node.port());
        }
    }

    /// The node (index into `nodes`) that is master of `key`'s slot, as
    /// the live node `asked` sees it.
    pub fn master_of(&self, key: &str, asked: usize) -> Option<usize> {
        let port = self.nodes[asked].port();
        let slot: u16 = self
            .cli(port, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .ok()?;
        // `CLUSTER NODES`: id addr@bus flags master ping pong epoch state slots...
        self.cli(port, &["cluster", "nodes"])
            .lines()
            .find(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 8
                    && fields[2].contains("master")
                    && !fields[2].contains("fail")
                    && fields[8..].iter().any(|range| {
                        let (low, high) = range.split_once('-').unwrap_or((range, range));
                        match (low.parse::<u16>(), high.parse::<u16>()) {
                            (Ok(low), Ok(high)) => (low..=high).contains(&slot),
                            _ => false,
                        }
                    })
            })
            .and_then(|line| {
                let addr = line.split_whitespace().nth(1)?;
                let port: u16 = addr.split('@').next()?.rsplit(':').next()?.parse().ok()?;
                self.nodes.iter().position(|node| node.port() == port)
            })
    }

    /// How many sharded subscribers `channel` has at node `node`.
    pub fn shard_subscribers(&self, channel: &str, node: usize) -> u64 {
        self.cli(self.nodes[node].port(), &["pubsub", "shardnumsub", channel])
            .lines()
            .nth(1)
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Moves the slot of `key` from master `from` to master `to`, as a
    /// resharding does (there are no keys to migrate).
    pub fn move_slot_of(&self, key: &str, from: usize, to: usize) {
        let (from, to) = (self.nodes[from].port(), self.nodes[to].port());
        let slot = self
            .cli(from, &["cluster", "keyslot", key])
            .trim()
            .to_string();
        let from_id = self.cli(from, &["cluster", "myid"]).trim().to_string();
        let to_id = self.cli(to, &["cluster", "myid"]).trim().to_string();
        for (port, args) in [
            (to, ["cluster", "setslot", &slot, "importing", &from_id]),
            (from, ["cluster", "setslot", &slot, "migrating", &to_id]),
            (to, ["cluster", "setslot", &slot, "node", &to_id]),
            (from, ["cluster", "setslot", &slot, "node", &to_id]),
        ] {
            let answer = self.cli(port, &args);
            assert_eq!(answer.trim(), "OK", "CLUSTER {args:?} at {port}");
        }
    }

    /// The nodes that are masters now.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&index| {
                self.cli(self.nodes[index].port(), &["info", "replication"])
                    .contains("role:master")
            })
            .collect()
    }
}

/// redis-cli's flags to reach a server of the authority `tls` (none: plain).
fn tls_flags(tls: Option<&TlsFiles>) -> Vec<String> {
    match tls {
        Some(files) => vec!["--tls".into(), "--cacert".into(), files.ca.clone()],
        None => Vec::new(),
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if self.tls.is_some() {
            let _ = std::fs::remove_dir_all(shared_authority_dir());
        }
    }
}

fn redis_cli(tls: Option<&TlsFiles>, port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(tls_flags(tls))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}

/// The name the test sentinels monitor their master under.
pub const SENTINEL_SERVICE: &str = "mymaster";

/// Redis Sentinel as it is deployed: one master, two replicas and three
/// sentinels (quorum 2), each on a free loopback port. The sentinels take a
/// master for down after 1 s of silence.
pub struct RedisSentinels {
    /// The Redis servers; the first was the master at the start.
    pub servers: Vec<Broker>,
    pub sentinels: Vec<Broker>,
}

impl RedisSentinels {
    /// Starts them all and waits until every sentinel names the master.
    pub fn start() -> RedisSentinels {
        let master = Broker::start(Kind::Redis);
        let port = master.port().to_string();
        let mut servers = vec![master];
        for _ in 0..2 {
            servers.push(Broker::start_with(
                Kind::Redis,
                &["--replicaof", "127.0.0.1", &port],
            ));
        }
        let sentinels = (0..3)
            .map(|_| {
                Broker::start_with(
                    Kind::RedisSentinel,
                    &[
                        "--sentinel",
                        "monitor",
                        SENTINEL_SERVICE,
                        "127.0.0.1",
                        &port,
                        "2",
                        "--sentinel",
                        "down-after-milliseconds",
                        SENTINEL_SERVICE,
                        "1000",
                        "--sentinel",
                        "failover-timeout",
                        SENTINEL_SERVICE,
                        "5000",
                    ],
                )
            })
            .collect();
        let sentinels = RedisSentinels { servers, sentinels };
        sentinels.wait(|| {
            (0..sentinels.sentinels.len()).all(|index| sentinels.master_named_by(index) == Some(0))
        });
        sentinels
    }

    /// The sentinels' URLs (`redis://127.0.0.1:PORT`).
    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|sentinel| Kind::RedisSentinel.url(sentinel.addr()))
            .collect()
    }

    /// The server (index into `servers`) that sentinel `index` names master.
    pub fn master_named_by(&self, index: usize) -> Option<usize> {
        let answer = redis_cli(
            None,
            self.sentinels[index].port(),
            &["sentinel", "get-master-addr-by-name", SENTINEL_SERVICE],
        );
        let port: u16 = answer.lines().nth(1)?.trim().parse().ok()?;
        self.servers.iter().position(|server| server.port() == port)
    }

    /// Waits until a failover can happen: every sentinel knows the other
    /// two and both replicas, and both replicas are in sync.
    pub fn wait_until_failover_ready(&self) {
        self.wait(|| {
            let counted = |sentinel: &Broker, what: &str| {
                redis_cli(None, sentinel.port(), &["sentinel", what, SENTINEL_SERVICE])
                    .lines()
                    .filter(|line| line.trim() == "name")
                    .count()
            };
            self.sentinels.iter().all(|sentinel| {
                counted(sentinel, "sentinels") == 2 && counted(sentinel, "replicas") == 2
            }) && self.servers[1..].iter().all(|replica| {
                redis_cli(None, replica.port(), &["info", "replication"])
                    .contains("master_link_status:up")
            })
        });
    }

    /// Waits until every sentinel names a master other than `old`, and
    /// returns it.
    pub fn wait_for_new_master(&self, old: usize) -> usize {
        let within = Duration::from_secs(30);
        let started = Instant::now();
        while started.elapsed() < within {
            let named: Vec<Option<usize>> = (0..self.sentinels.len())
                .map(|index| self.master_named_by(index))
                .collect();
            if let Some(Some(new)) = named.first()
                && *new != old
                && named.iter().all(|other| other == &Some(*new))
            {
                return *new;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the sentinels did not fail the master over within {within:?}");
    }

    /// Asks the first sentinel to fail the master over now, leaving the old
    /// one running (it becomes a replica).
    pub fn failover(&self) {
        let answer = redis_cli(
            None,
            self.sentinels[0].port(),
            &["sentinel", "failover", SENTINEL_SERVICE],
        );
        assert_eq!(answer.trim(), "OK", "SENTINEL FAILOVER");
    }

    /// How many `PUBLISH` commands server `index` has served.
    pub fn publish_calls(&self, index: usize) -> u64 {
        redis_cli(None, self.servers[index].port(), &["info", "commandstats"])
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_publish:calls="))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    fn wait(&self, ready: impl Fn() -> bool) {
        let within = Duration::from_secs(30);
        let started = Instant::now();
        while started.elapsed() < within {
            if ready() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the Redis sentinels were not ready within {within:?}");
    }
}
