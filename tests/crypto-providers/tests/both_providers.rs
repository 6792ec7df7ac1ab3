//! rustls is linked with both ring and aws-lc-rs here, and no process
//! default provider is installed, so `ClientConfig::builder()` cannot choose
//! one and panics. A Native node and a Redis node over TLS still start and
//! carry messages: the library never relies on the process default.

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

/// A redis-server that speaks only TLS, with a certificate of a test
/// authority; killed when dropped.
struct TlsRedis {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl TlsRedis {
    fn start() -> TlsRedis {
        let dir = std::env::temp_dir().join(format!("crypto-providers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        let port = free_port();
        let path = |name: &str| dir.join(name).display().to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--tls-cert-file", &path("server.pem")])
            .args(["--tls-key-file", &path("server.key")])
            .args(["--tls-ca-cert-file", &path("ca.pem")])
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test.sh installs it)");
        let started = Instant::now();
        while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(started.elapsed() < LONG, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis { child, port, dir }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_nodes_speak_tls_without_a_default_provider() {
    let redis = TlsRedis::start();
    let ca = redis.dir.join("ca.pem").display().to_string();
    let mut nodes = Vec::new();
    for id in [1, 2] {
        nodes.push(
            start(&format!(
                r#"{{"@type": "Redis", "nodeId": {id}, "url": "rediss://127.0.0.1:{}",
                    "tlsCaPath": {ca:?}, "timeout": "5s"}}"#,
                redis.port
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
