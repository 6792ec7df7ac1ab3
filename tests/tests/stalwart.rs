//! Stalwart's coordinator configurations mean here what they mean to Stalwart,
//! against a real broker.

use coordinator::{Coordinator, CoordinatorConfig};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tests::brokers::free_port;

/// A `nats-server` that accepts only clients with `token`.
struct TokenNats {
    child: Child,
    port: u16,
}

impl TokenNats {
    fn start(token: &str) -> TokenNats {
        let port = free_port();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "--auth", token])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (Debian's package nats-server) on PATH");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TokenNats { child, port }
    }
}

impl Drop for TokenNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_config(port: u16, auth: &str) -> CoordinatorConfig {
    CoordinatorConfig::from_json(&format!(
        r#"{{"@type":"Nats","nodeId":1,"addresses":{{"127.0.0.1:{port}":true}},
            "timeoutConnection":"2s","maxReconnects":0,{auth}}}"#
    ))
    .expect("a valid configuration")
}

/// Stalwart hands `credentials` to the NATS client as a token, and ignores a
/// user name that has no secret (its defaults carry one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_credentials_are_a_token_as_in_stalwart() {
    let server = TokenNats::start("s3cret-token");
    let node = coordinator::start(&nats_config(
        server.port,
        r#""authUsername":"stalwart","credentials":{"@type":"Value","secret":"s3cret-token"}"#,
    ))
    .await
    .expect("the token is accepted");
    assert_eq!(node.carrier(), "Nats");
    node.leave().await.expect("leaves");
    let refused = coordinator::start(&nats_config(
        server.port,
        r#""credentials":{"@type":"Value","secret":"wrong-token"}"#,
    ))
    .await;
    assert!(refused.is_err(), "a wrong token was accepted");
}
