//! Prometheus metrics of a node (cargo feature `metrics`), read from its
//! counters and membership at each scrape: nothing is added to the paths
//! that move messages.
//!
//! Register them in the application's own registry with
//! [`NodeMetrics::register`], or serve a registry of their own with
//! [`NodeMetrics::registry`] and [`encode`] (`coordinator node --metrics`
//! does). Every series carries the labels `node` and `carrier`.

use crate::{Coordinator, MemberState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The metrics of one node.
#[derive(Clone)]
pub struct NodeMetrics {
    node: Arc<dyn Coordinator>,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics")
            .field("node", &self.node.node_id())
            .field("carrier", &self.node.carrier())
            .finish()
    }
}

impl NodeMetrics {
    pub fn new(node: Arc<dyn Coordinator>) -> Self {
        Self { node }
    }

    /// Adds this node's metrics to `registry` (names start with `coordinator_`).
    pub fn register(self, registry: &mut Registry) {
        registry.register_collector(Box::new(self));
    }

    /// A registry holding only this node's metrics.
    pub fn registry(self) -> Registry {
        let mut registry = Registry::default();
        self.register(&mut registry);
        registry
    }
}

/// `registry` in the Prometheus text format (OpenMetrics).
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

type Labels = Vec<(&'static str, String)>;

/// Writes metric families, each series with the node's labels.
struct Families<'e> {
    encoder: DescriptorEncoder<'e>,
    node: Labels,
}

impl Families<'_> {
    fn with(&self, extra: &[(&'static str, &str)]) -> Labels {
        let mut labels = self.node.clone();
        labels.extend(extra.iter().map(|(key, value)| (*key, value.to_string())));
        labels
    }

    fn counters(
        &mut self,
        name: &str,
        help: &str,
        series: &[(&[(&'static str, &str)], u64)],
    ) -> std::fmt::Result {
        let series: Vec<(Labels, u64)> = series
            .iter()
            .map(|(extra, value)| (self.with(extra), *value))
            .collect();
        let mut family = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in &series {
            ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) -> std::fmt::Result {
        self.counters(name, help, &[(&[], value)])
    }
}

impl Collector for NodeMetrics {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.node.stats();
        let mut out = Families {
            encoder,
            node: vec![
                ("node", self.node.node_id().to_string()),
                ("carrier", self.node.carrier().to_string()),
            ],
        };

        let members = self.node.members();
        let count = |state: MemberState| members.iter().filter(|m| m.state == state).count();
        let by_state: Vec<(Labels, i64)> = [
            (MemberState::Alive, "alive"),
            (MemberState::Suspect, "suspect"),
            (MemberState::Dead, "dead"),
        ]
        .into_iter()
        .map(|(state, name)| (out.with(&[("state", name)]), count(state) as i64))
        .collect();
        let mut family = out.encoder.encode_descriptor(
            "coordinator_members",
            "Members this node knows, itself included, by state",
            None,
            MetricType::Gauge,
        )?;
        for (labels, value) in &by_state {
            ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
        }

        out.counters(
            "coordinator_messages_sent",
            "Messages this node sent, by kind (control: heartbeats, joins, announcements)",
            &[
                (&[("kind", "broadcast")], stats.broadcasts_sent),
                (&[("kind", "direct")], stats.direct_sent),
                (&[("kind", "control")], stats.heartbeats_sent),
            ],
        )?;
        out.counters(
            "coordinator_messages_received",
            "Messages delivered to this node's application, by kind",
            &[
                (&[("kind", "broadcast")], stats.broadcasts_delivered),
                (&[("kind", "direct")], stats.direct_delivered),
            ],
        )?;
        out.counters(
            "coordinator_bytes",
            "Bytes of frames handed to the carrier (sent) and by it (received)",
            &[
                (&[("direction", "sent")], stats.bytes_sent),
                (&[("direction", "received")], stats.bytes_received),
            ],
        )?;
        out.counter(
            "coordinator_frames_received",
            "Frames the carrier handed to this node",
            stats.frames_received,
        )?;
        out.counters(
            "coordinator_batches",
            "Frames that carried several messages at once",
            &[
                (&[("direction", "sent")], stats.batches_sent),
                (&[("direction", "received")], stats.batches_received),
            ],
        )?;
        out.counter(
            "coordinator_gaps",
            "Gaps found in other nodes' streams",
            stats.gaps,
        )?;
        out.counter(
            "coordinator_messages_lost",
            "Messages of other nodes reported lost in those gaps",
            stats.messages_lost,
        )?;
        out.counters(
            "coordinator_dropped",
            "Incoming frames and messages dropped, by reason",
            &[
                (&[("reason", "malformed")], stats.dropped_malformed),
                (
                    &[("reason", "unauthenticated")],
                    stats.dropped_unauthenticated,
                ),
                (&[("reason", "too_large")], stats.dropped_too_large),
                (&[("reason", "duplicate")], stats.dropped_duplicate),
                (&[("reason", "stale")], stats.dropped_stale),
                (&[("reason", "overflow")], stats.dropped_overflow),
            ],
        )?;
        out.counter(
            "coordinator_broadcasts_failed",
            "Broadcasts that could not be handed to the carrier after broadcast() returned",
            stats.broadcasts_failed,
        )?;
        out.counter(
            "coordinator_send_failures",
            "Sends the carrier refused",
            stats.send_failures,
        )?;
        out.counter(
            "coordinator_requests_timed_out",
            "Requests that got no reply in time",
            stats.requests_timed_out,
        )?;
        out.counters(
            "coordinator_link_changes",
            "Times the carrier reported its link down, and up again",
            &[
                (&[("direction", "down")], stats.link_downs),
                (&[("direction", "up")], stats.link_ups),
            ],
        )?;

        let latency = &stats.request_latency;
        let mut previous = 0;
        let mut buckets: Vec<(f64, u64)> = latency
            .cumulative
            .iter()
            .map(|&(bound, cumulative)| {
                let bucket = (bound as f64 / 1e6, cumulative - previous);
                previous = cumulative;
                bucket
            })
            .collect();
        buckets.push((f64::MAX, latency.count - previous));
        let mut family = out.encoder.encode_descriptor(
            "coordinator_request_duration_seconds",
            "How long requests took to get their reply",
            None,
            MetricType::Histogram,
        )?;
        family
            .encode_family(&out.node)?
            .encode_histogram::<NoLabelSet>(
                latency.sum_micros as f64 / 1e6,
                latency.count,
                &buckets,
                None,
            )?;
        Ok(())
    }
}
