//! The limit for the Zenoh carrier: two bare zenoh sessions opened with the
//! same configuration, a publisher declared once (`Block` congestion control,
//! as the carrier's), a subscriber, and a queryable for request/reply.

use anyhow::{Context, anyhow};
use coordinator::config::ZenohConfig;
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};
use zenoh::Session;
use zenoh::qos::CongestionControl;

async fn session(config: &ZenohConfig) -> anyhow::Result<Session> {
    let config = zenoh::Config::from_json5(&config.config).map_err(|e| anyhow!("{e}"))?;
    zenoh::open(config).await.map_err(|e| anyhow!("{e}"))
}

fn key(what: &str) -> String {
    format!("bench-raw/{what}/{}", std::process::id())
}

/// Two bare zenoh sessions with this configuration.
pub struct RawZenoh<'a>(pub &'a ZenohConfig);

impl RawZenoh<'_> {
    /// A publisher in one session, a subscriber in the other, matched.
    async fn pair(
        &self,
        what: &str,
    ) -> anyhow::Result<(
        Session,
        Session,
        zenoh::pubsub::Publisher<'static>,
        zenoh::pubsub::Subscriber<zenoh::handlers::FifoChannelHandler<zenoh::sample::Sample>>,
    )> {
        let (sender, receiver) = (session(self.0).await?, session(self.0).await?);
        let key = key(what);
        let subscriber = receiver
            .declare_subscriber(key.clone())
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let publisher = sender
            .declare_publisher(key)
            .congestion_control(CongestionControl::Block)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        // Wait until the subscription has reached the publisher's side.
        let started = Instant::now();
        while !publisher
            .matching_status()
            .await
            .map_err(|e| anyhow!("{e}"))?
            .matching()
        {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "the raw zenoh sessions do not see each other"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok((sender, receiver, publisher, subscriber))
    }
}

impl super::bench::RawBroker for RawZenoh<'_> {
    const SUBJECT: &'static str = "raw zenoh";
    const DESCRIPTION: &'static str = "two bare zenoh sessions with the same configuration";

    async fn one_way(
        &self,
        count: u64,
        size: usize,
        limit: Duration,
    ) -> anyhow::Result<(u64, Duration)> {
        let (_sender, _receiver, publisher, subscriber) = self.pair("throughput").await?;
        let body = bytes::Bytes::from(vec![0x5a; size]);
        let send = async move {
            for _ in 0..count {
                publisher
                    .put(body.clone())
                    .await
                    .map_err(|e| anyhow!("{e}"))?;
            }
            anyhow::Ok(())
        };
        let mut arrivals = subscriber.stream();
        let receive = super::bench::count_arrivals(&mut arrivals, count, limit);
        super::bench::timed_one_way(send, receive).await
    }

    async fn publish_latency(
        &self,
        samples: u64,
        size: usize,
        histogram: &mut Histogram<u64>,
    ) -> anyhow::Result<()> {
        let (_sender, _receiver, publisher, subscriber) = self.pair("latency").await?;
        let body = bytes::Bytes::from(vec![0x5a; size]);
        super::bench::time_each(samples, histogram, async || {
            publisher
                .put(body.clone())
                .await
                .map_err(|e| anyhow!("{e}"))?;
            tokio::time::timeout(Duration::from_secs(10), subscriber.recv_async())
                .await
                .context("raw zenoh sample lost")?
                .map_err(|e| anyhow!("{e}"))?;
            Ok(())
        })
        .await
    }

    /// A query to a queryable in the other session, answered on its own key.
    async fn request_latency(
        &self,
        samples: u64,
        size: usize,
        histogram: &mut Histogram<u64>,
    ) -> anyhow::Result<()> {
        let (requester, responder) = (session(self.0).await?, session(self.0).await?);
        let key = key("request");
        let reply_key = key.clone();
        let _queryable = responder
            .declare_queryable(key.clone())
            .callback(move |query| {
                use zenoh::Wait;
                let payload = query.payload().cloned().unwrap_or_default();
                let _ = query.reply(reply_key.clone(), payload).wait();
            })
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let body = bytes::Bytes::from(vec![0x5a; size]);
        let started = Instant::now();
        let mut done = 0;
        while done < samples {
            let sent = Instant::now();
            let replies = requester
                .get(key.clone())
                .payload(body.clone())
                .consolidation(zenoh::query::ConsolidationMode::None)
                .timeout(Duration::from_secs(10))
                .await
                .map_err(|e| anyhow!("{e}"))?;
            match replies.recv_async().await {
                Ok(reply) if reply.result().is_ok() => {
                    histogram.record(sent.elapsed().as_nanos() as u64)?;
                    done += 1;
                }
                // Until the queryable is known on the requester's side.
                _ if done == 0 && started.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                _ => anyhow::bail!("raw zenoh query got no reply"),
            }
        }
        Ok(())
    }
}
