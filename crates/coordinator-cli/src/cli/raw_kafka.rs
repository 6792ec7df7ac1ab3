//! The limit for the Kafka carrier: a bare rdkafka producer and consumer on
//! the same brokers with the carrier's own client settings (the same
//! `fetchWaitMax`, `linger`, security and `properties`), on topics of their own.

use anyhow::{Context, bail};
use coordinator::Settings;
use coordinator::config::KafkaConfig;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

type Producer = ThreadedProducer<DefaultProducerContext>;

/// Bare rdkafka clients with the settings of this configuration.
pub struct RawKafka<'a>(pub &'a KafkaConfig);

impl RawKafka<'_> {
    fn settings(&self, node: u64) -> Settings {
        Settings::new(node).cluster("bench-raw")
    }

    fn producer(&self) -> anyhow::Result<Producer> {
        Ok(coordinator_kafka::options::producer(self.0, &self.settings(1))?.create()?)
    }

    /// A topic of its own, and a consumer reading it from its current end.
    async fn topic_and_consumer(&self, what: &str) -> anyhow::Result<(String, StreamConsumer)> {
        let topic = format!("bench-raw.{what}.{}", std::process::id());
        let admin: AdminClient<DefaultClientContext> =
            coordinator_kafka::options::admin(self.0, &self.settings(2))?.create()?;
        let created = admin
            .create_topics(
                [&NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await?;
        for result in created {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => bail!("cannot create {topic}: {code}"),
            }
        }
        let consumer: StreamConsumer =
            coordinator_kafka::options::consumer(self.0, &self.settings(2))?.create()?;
        let name = topic.clone();
        let consumer = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let high = loop {
                match consumer.fetch_watermarks(&name, 0, Duration::from_secs(1)) {
                    Ok((_, high)) => break high,
                    Err(_) if started.elapsed() < Duration::from_secs(10) => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Err(error) => return Err(anyhow::Error::from(error)),
                }
            };
            let mut assignment = TopicPartitionList::new();
            assignment.add_partition_offset(&name, 0, Offset::Offset(high))?;
            consumer.assign(&assignment)?;
            anyhow::Ok(consumer)
        })
        .await??;
        Ok((topic, consumer))
    }
}

/// Sends one record, waiting for room in the producer's queue.
async fn produce(producer: &Producer, topic: &str, body: &[u8]) -> anyhow::Result<()> {
    loop {
        match producer.send(BaseRecord::<[u8], [u8]>::to(topic).payload(body)) {
            Ok(()) => return Ok(()),
            Err((error, _)) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                tokio::time::sleep(Duration::from_micros(200)).await
            }
            Err((error, _)) => return Err(error.into()),
        }
    }
}

async fn next(consumer: &StreamConsumer) -> anyhow::Result<Vec<u8>> {
    let message = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
        .await
        .context("raw Kafka message lost")??;
    Ok(message.payload().unwrap_or_default().to_vec())
}

impl super::bench::RawBroker for RawKafka<'_> {
    const SUBJECT: &'static str = "raw rdkafka";
    const DESCRIPTION: &'static str = "a bare rdkafka producer and consumer with the same settings";

    async fn one_way(
        &self,
        count: u64,
        size: usize,
        limit: Duration,
    ) -> anyhow::Result<(u64, Duration)> {
        let (topic, consumer) = self.topic_and_consumer("throughput").await?;
        let producer = self.producer()?;
        let body = vec![0x5a; size];
        let send = async move {
            for _ in 0..count {
                produce(&producer, &topic, &body).await?;
            }
            anyhow::Ok(())
        };
        let mut stream = consumer.stream();
        let receive = super::bench::count_arrivals(&mut stream, count, limit);
        super::bench::timed_one_way(send, receive).await
    }

    async fn publish_latency(
        &self,
        samples: u64,
        size: usize,
        histogram: &mut Histogram<u64>,
    ) -> anyhow::Result<()> {
        let (topic, consumer) = self.topic_and_consumer("latency").await?;
        let producer = self.producer()?;
        let body = vec![0x5a; size];
        super::bench::time_each(samples, histogram, async || {
            produce(&producer, &topic, &body).await?;
            next(&consumer).await.map(drop)
        })
        .await
    }

    /// A request on one topic, answered on another by a task that reads it.
    async fn request_latency(
        &self,
        samples: u64,
        size: usize,
        histogram: &mut Histogram<u64>,
    ) -> anyhow::Result<()> {
        let (requests, request_consumer) = self.topic_and_consumer("request").await?;
        let (replies, reply_consumer) = self.topic_and_consumer("reply").await?;
        let responder = self.producer()?;
        let answering = tokio::spawn(async move {
            while let Ok(request) = request_consumer.recv().await {
                let body = request.payload().unwrap_or_default().to_vec();
                if produce(&responder, &replies, &body).await.is_err() {
                    return;
                }
            }
        });
        let requester = self.producer()?;
        let body = vec![0x5a; size];
        let timed = super::bench::time_each(samples, histogram, async || {
            produce(&requester, &requests, &body).await?;
            next(&reply_consumer).await.map(drop)
        })
        .await;
        answering.abort();
        timed?;
        Ok(())
    }
}
