//! What librdkafka tells the carrier: global errors (a broker gone), failed
//! deliveries and log lines, turned into link state and `tracing` events.

use coordinator_core::transport::{Inbound, InboundSender};
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::ProducerContext;
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::Notify;

/// The state of the link to the brokers, shared by the clients of one node
/// and the task that watches the brokers.
pub struct LinkState {
    inbound: InboundSender,
    down: AtomicBool,
    /// A broker connection failed since the watcher last looked: the broker
    /// may come back without the topics the consumer knows (see `Watcher`).
    troubled: AtomicBool,
    /// Wakes the watcher when librdkafka reports a broker gone.
    pub wake: Notify,
    /// Messages the producer gave up on (`timeoutMessage` expired).
    pub failed_deliveries: AtomicU64,
}

impl LinkState {
    pub fn new(inbound: InboundSender) -> Arc<Self> {
        Arc::new(Self {
            inbound,
            down: AtomicBool::new(false),
            troubled: AtomicBool::new(false),
            wake: Notify::new(),
            failed_deliveries: AtomicU64::new(0),
        })
    }

    pub fn inbound(&self) -> &InboundSender {
        &self.inbound
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Reports the link down, once until it is up again.
    pub fn went_down(&self, detail: String) {
        if !self.down.swap(true, Ordering::AcqRel) {
            self.inbound.deliver(Inbound::LinkDown(detail));
        }
        self.troubled();
    }

    /// Notes that a broker connection failed, and wakes the watcher.
    pub fn troubled(&self) {
        self.troubled.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Whether a broker connection failed since the last call.
    pub fn take_trouble(&self) -> bool {
        self.troubled.swap(false, Ordering::AcqRel)
    }

    /// Reports the link up, if it was down.
    pub fn came_up(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            self.inbound.deliver(Inbound::LinkUp);
        }
    }
}

/// The context of every client of one node.
#[derive(Clone)]
pub struct LinkContext {
    pub state: Arc<LinkState>,
}

impl ClientContext for LinkContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::debug!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::trace!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                self.state
                    .went_down(format!("Kafka: no broker reachable: {reason}"));
            }
            Some(RDKafkaErrorCode::BrokerTransportFailure) => {
                tracing::debug!(%reason, "Kafka: a broker connection failed");
                self.state.troubled();
            }
            _ => tracing::warn!(%error, %reason, "Kafka client error"),
        }
    }
}

impl ConsumerContext for LinkContext {}

impl ProducerContext for LinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, message)) = result {
            use rdkafka::Message;
            let count = self.state.failed_deliveries.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                %error,
                topic = message.topic(),
                failed_so_far = count,
                "Kafka: a message was not delivered within timeoutMessage; its receivers report a gap"
            );
        }
    }
}
