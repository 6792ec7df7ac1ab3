//! A library user registers a node's metrics in the application's own
//! Prometheus registry, beside its own metrics.
#![cfg(feature = "metrics")]

use coordinator::metrics::{NodeMetrics, encode};
use coordinator::{Coordinator, CoordinatorConfig};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_metrics_sit_in_the_applications_registry() {
    let config = CoordinatorConfig::from_json(r#"{"@type": "Disabled", "nodeId": 4}"#).unwrap();
    let node: Arc<dyn Coordinator> = Arc::new(coordinator::start(&config).await.unwrap());
    let mut registry = Registry::default();
    let mails = Counter::<u64>::default();
    registry.register("mails_delivered", "The application's own", mails.clone());
    NodeMetrics::new(node.clone()).register(&mut registry);
    mails.inc();
    // A request to itself is answered locally, and timed.
    let mut inbox = node.inbox().unwrap();
    tokio::spawn(async move {
        while let Some(request) = inbox.recv().await {
            let _ = request.reply("ok".into()).await;
        }
    });
    node.request(4, "ping".into(), Duration::from_secs(5))
        .await
        .unwrap();
    let text = encode(&registry);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text");
    let names: Vec<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    assert!(names.contains(&"mails_delivered_total"), "{names:?}");
    assert!(names.contains(&"coordinator_members"), "{names:?}");
    let alive = scrape
        .samples
        .iter()
        .find(|s| s.metric == "coordinator_members" && s.labels.get("state") == Some("alive"))
        .unwrap();
    assert_eq!(alive.labels.get("node"), Some("4"));
    assert!(matches!(alive.value, prometheus_parse::Value::Gauge(v) if v == 1.0));
    node.leave().await.unwrap();
}
