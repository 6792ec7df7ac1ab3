//! rustls is linked with both ring and aws-lc-rs here, and no process
//! default provider is installed, so `ClientConfig::builder()` cannot choose
//! one and panics. Native nodes, and Redis, Redis Cluster and Redis Sentinel
//! nodes over TLS, still start and carry broadcasts and requests: the library
//! never relies on the process default.

use bytes::Bytes;
use coordinator::{Coordinator, CoordinatorConfig, SubscribeOptions};
use rustls::crypto::CryptoProvider;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(20);

/// A loopback port free for TCP and UDP a moment ago (Native uses both).
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

#[test]
fn this_process_has_two_providers_and_no_default() {
    assert!(CryptoProvider::get_default().is_none());
    let builder = std::panic::catch_unwind(rustls::ClientConfig::builder);
    assert!(
        builder.is_err(),
        "ClientConfig::builder() found a provider: this test would prove nothing"
    );
}

/// Starts a node from a JSON configuration text.
async fn start(config: &str) -> std::sync::Arc<dyn Coordinator> {
    let config = CoordinatorConfig::from_json(config).expect("a valid configuration");
    let node = tokio::time::timeout(LONG, coordinator::start(&config))
        .await
        .expect("starts in time")
        .unwrap_or_else(|error| panic!("start: {error}"));
    std::sync::Arc::new(node)
}

/// Nodes 1 and 2 of the carrier that `fields` describe (a JSON object's
/// members, without `nodeId`).
async fn two_nodes(fields: &str) -> Vec<std::sync::Arc<dyn Coordinator>> {
    let mut nodes = Vec::new();
    for id in [1, 2] {
        nodes.push(start(&format!(r#"{{"nodeId": {id}, "timeout": "5s", {fields}}}"#)).await);
    }
    nodes
}

/// Node 1 broadcasts until node 2 has one.
async fn a_broadcast_crosses(nodes: &[std::sync::Arc<dyn Coordinator>]) {
    let mut subscription = nodes[1]
        .subscribe("t", SubscribeOptions::default())
        .await
        .unwrap();
    tokio::time::timeout(LONG, async {
        loop {
            let _ = nodes[0].broadcast("t", Bytes::from_static(b"hi")).await;
            if let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_millis(200), subscription.recv()).await
            {
                assert_eq!(message.payload, "hi");
                return;
            }
        }
    })
    .await
    .expect("a broadcast from node 1 at node 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_nodes_speak_tls_without_a_default_provider() {
    let ports = [free_port(), free_port()];
    let mut nodes = Vec::new();
    for (index, port) in ports.iter().enumerate() {
        let seed = ports[1 - index];
        nodes.push(
            start(&format!(
                r#"{{"@type": "Native", "nodeId": {}, "bindAddr": "127.0.0.1", "port": {port},
                    "seedNodes": ["127.0.0.1:{seed}"],
                    "clusterKey": {{"@type": "Value", "secret": "both-providers-test-key"}}}}"#,
                index + 1
            ))
            .await,
        );
    }
    a_broadcast_crosses(&nodes).await;
    for node in &nodes {
        node.leave().await.unwrap();
    }
    assert!(
        CryptoProvider::get_default().is_none(),
        "a default was installed"
    );
}

/// Node 2 answers node 1's request (once node 1 knows node 2).
async fn a_request_is_answered(nodes: &[std::sync::Arc<dyn Coordinator>]) {
    let started = Instant::now();
    while !nodes[0].members().iter().any(|member| member.id == 2) {
        assert!(started.elapsed() < LONG, "node 1 never saw node 2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut inbox = nodes[1].inbox().unwrap();
    let answering = tokio::spawn(async move {
        while let Some(incoming) = inbox.recv().await {
            let answer = Bytes::from([b"re: ".as_slice(), &incoming.payload].concat());
            let _ = incoming.reply(answer).await;
        }
    });
    let answer = nodes[0]
        .request(2, Bytes::from_static(b"ping"), LONG)
        .await
        .expect("node 2 answers node 1");
    assert_eq!(answer, "re: ping");
    answering.abort();
}

/// Broadcasts and requests cross, nodes leave, and no default provider was
/// installed meanwhile.
async fn messages_cross_and_no_default_appears(nodes: Vec<std::sync::Arc<dyn Coordinator>>) {
    a_broadcast_crosses(&nodes).await;
    a_request_is_answered(&nodes).await;
    for node in &nodes {
        node.leave().await.unwrap();
    }
    assert!(
        CryptoProvider::get_default().is_none(),
        "a default was installed"
    );
}

/// A test certificate authority, and a server certificate it signed for
/// 127.0.0.1, in a directory of their own (removed when dropped).
struct Authority {
    dir: std::path::PathBuf,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let dir =
            std::env::temp_dir().join(format!("crypto-providers-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // A name of its own: with rcgen's default, the same as the server
        // certificate's, OpenSSL (redis-cli, the cluster bus) takes the
        // server certificate for a self-signed one.
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "crypto-providers test authority");
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        server
            .distinguished_name
            .push(rcgen::DnType::CommonName, "127.0.0.1");
        let server = server.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        Authority { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The TLS settings of a server (and of its links to other servers).
    fn server_lines(&self, port: u16) -> String {
        format!(
            "port 0\ntls-port {port}\nbind 127.0.0.1\ntls-cert-file {}\ntls-key-file {}\n\
             tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n\
             save \"\"\nappendonly no\ndir {}\n",
            self.path("server.pem"),
            self.path("server.key"),
            self.path("ca.pem"),
            self.dir.display()
        )
    }

    /// Runs `program` with a configuration file of `server_lines` and
    /// `extra`, until it listens on `port`.
    fn run(&self, program: &str, port: u16, extra: &str) -> Process {
        let file = self.dir.join(format!("{program}-{port}.conf"));
        std::fs::write(&file, self.server_lines(port) + extra).unwrap();
        let child = Command::new(program)
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("{program} runs (scripts/test.sh installs it): {error}")
            });
        let process = Process { child };
        let started = Instant::now();
        while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(
                started.elapsed() < LONG,
                "{program} did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        process
    }

    /// `redis-cli` over TLS to the server on `port`, its output.
    fn cli(&self, port: u16, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["--tls", "--cacert", &self.path("ca.pem"), "-h", "127.0.0.1"])
            .args(["-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs (scripts/test.sh installs it)");
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr)
    }
}

impl Drop for Authority {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A broker process, killed when dropped.
struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_nodes_speak_tls_without_a_default_provider() {
    let authority = Authority::new("redis");
    let port = free_port();
    let _server = authority.run("redis-server", port, "");
    let ca = authority.path("ca.pem");
    let nodes = two_nodes(&format!(
        r#""@type": "Redis", "url": "rediss://127.0.0.1:{port}", "tlsCaPath": {ca:?}"#
    ))
    .await;
    messages_cross_and_no_default_appears(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_nodes_speak_tls_without_a_default_provider() {
    let authority = Authority::new("cluster");
    let ports = [free_port(), free_port(), free_port()];
    let _servers: Vec<Process> = ports
        .iter()
        .map(|&port| {
            authority.run(
                "redis-server",
                port,
                &format!(
                    "cluster-enabled yes\ncluster-config-file nodes-{port}.conf\n\
                     tls-cluster yes\n"
                ),
            )
        })
        .collect();
    let addresses: Vec<String> = ports
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(addresses.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    let created = authority.cli(ports[0], &create);
    let started = Instant::now();
    while !ports.iter().all(|&port| {
        authority
            .cli(port, &["cluster", "info"])
            .contains("cluster_state:ok")
    }) {
        assert!(
            started.elapsed() < LONG,
            "the TLS cluster did not form: {created}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let urls: Vec<String> = addresses
        .iter()
        .map(|address| format!("rediss://{address}"))
        .collect();
    let ca = authority.path("ca.pem");
    let nodes = two_nodes(&format!(
        r#""@type": "RedisCluster", "urls": {urls:?}, "tlsCaPath": {ca:?}"#
    ))
    .await;
    messages_cross_and_no_default_appears(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_nodes_speak_tls_without_a_default_provider() {
    let authority = Authority::new("sentinel");
    let (master, sentinel) = (free_port(), free_port());
    let _master = authority.run("redis-server", master, "");
    let _sentinel = authority.run(
        "redis-sentinel",
        sentinel,
        &format!("sentinel monitor crypto 127.0.0.1 {master} 1\n"),
    );
    let ca = authority.path("ca.pem");
    let nodes = two_nodes(&format!(
        r#""@type": "RedisSentinel", "urls": ["rediss://127.0.0.1:{sentinel}"],
           "serviceName": "crypto", "tlsCaPath": {ca:?}"#
    ))
    .await;
    messages_cross_and_no_default_appears(nodes).await;
}
