//! What the Zenoh carrier does with Zenoh's own features.

use bytes::Bytes;
use std::time::Duration;
use tests::harness::{Harness, zenoh_peers, zenoh_router};
use tests::wait::converge;

/// A request travels as a Zenoh query and its reply as the answer to that
/// query, between peers and through a router.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_through_queryables() {
    for mut harness in [zenoh_peers().await, zenoh_router().await] {
        let nodes = vec![harness.start(1).await, harness.start(2).await];
        converge(&nodes, Duration::from_secs(10)).await;
        let mut inbox = nodes[1].inbox().unwrap();
        let server = tokio::spawn(async move {
            while let Some(request) = inbox.recv().await {
                let answer = [b"re: ".as_slice(), &request.payload].concat();
                let _ = request.reply(Bytes::from(answer)).await;
            }
        });
        for i in 0..3 {
            let reply = nodes[0]
                .request(2, Bytes::from(format!("q{i}")), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(reply, format!("re: q{i}").as_bytes());
        }
        let responder = harness.connector().transport(2).expect("node 2 runs");
        assert_eq!(
            responder.replies_sent(),
            (3, 0),
            "every reply answers its query (none put on the requester's key)"
        );
        server.abort();
    }
}

/// Two peers that speak only QUIC, or only TLS over TCP, with the
/// certificate `coordinator gen-cert` makes, as Stalwart's zenoh
/// configurations use them: they see each other and exchange a broadcast and
/// a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_talk_over_quic_and_tls_with_a_gen_cert_certificate() {
    use coordinator::{Coordinator, CoordinatorConfig, SubscribeOptions};
    use std::sync::Arc;
    let dir = std::env::temp_dir().join(format!("coordinator-zenoh-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // What `coordinator gen-cert --name localhost` writes.
    let (cert, key) = coordinator_native::tls::self_signed_pem(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    for scheme in ["quic", "tls"] {
        let ports = [tests::brokers::free_port(), tests::brokers::free_port()];
        let mut nodes: Vec<Arc<dyn Coordinator>> = Vec::new();
        for (index, port) in ports.iter().enumerate() {
            let connect = if index == 0 {
                String::new()
            } else {
                format!("\"{scheme}/localhost:{}\"", ports[0])
            };
            let zenoh = format!(
                r#"{{ mode: "peer",
                     listen: {{ endpoints: ["{scheme}/localhost:{port}"] }},
                     connect: {{ endpoints: [{connect}] }},
                     scouting: {{ delay: 0, multicast: {{ enabled: false }} }},
                     transport: {{ link: {{ tls: {{
                       root_ca_certificate: "{cert}",
                       listen_certificate: "{cert}",
                       listen_private_key: "{key}" }} }} }} }}"#,
                cert = cert_path.display(),
                key = key_path.display(),
            );
            let config = CoordinatorConfig::from_value(serde_json::json!({
                "@type": "Zenoh",
                "nodeId": index as u64 + 1,
                "cluster": format!("zenoh-{scheme}"),
                "clusterKey": {"@type": "Value", "secret": "zenoh-tls-test"},
                "config": zenoh,
            }))
            .unwrap();
            coordinator::check(&config).unwrap_or_else(|e| panic!("{scheme}: {e}"));
            let node = coordinator::start(&config)
                .await
                .unwrap_or_else(|e| panic!("{scheme}: {e}"));
            nodes.push(Arc::new(node));
        }
        converge(&nodes, Duration::from_secs(15)).await;
        let mut subscription = nodes[1]
            .subscribe("secure", SubscribeOptions::default())
            .await
            .unwrap();
        nodes[0]
            .broadcast("secure", Bytes::from_static(b"over the wire"))
            .await
            .unwrap();
        let message = tokio::time::timeout(Duration::from_secs(10), subscription.recv())
            .await
            .unwrap_or_else(|_| panic!("{scheme}: no broadcast"))
            .unwrap();
        assert_eq!(message.payload, "over the wire");
        let mut inbox = nodes[1].inbox().unwrap();
        let server = tokio::spawn(async move {
            if let Some(request) = inbox.recv().await {
                let _ = request.reply(Bytes::from_static(b"pong")).await;
            }
        });
        let reply = nodes[0]
            .request(2, Bytes::from_static(b"ping"), Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{scheme}: {e}"));
        assert_eq!(reply, "pong");
        server.abort();
        for node in nodes {
            let _ = node.leave().await;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
