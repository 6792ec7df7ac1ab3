//! The limit for the Redis carrier: bare redis-rs clients on the same server,
//! `PUBLISH` on a multiplexed connection and `SUBSCRIBE` on a pub/sub one.

use anyhow::Context;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use std::time::Duration;

fn channel(what: &str) -> String {
    format!("bench-raw.{what}.{}", std::process::id())
}

async fn publisher(client: &redis::Client) -> anyhow::Result<MultiplexedConnection> {
    Ok(client.get_multiplexed_async_connection().await?)
}

async fn publish(
    connection: &mut MultiplexedConnection,
    channel: &str,
    body: &[u8],
) -> anyhow::Result<()> {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(body)
        .query_async::<i64>(connection)
        .await?;
    Ok(())
}

/// Bare redis-rs clients on the server of this URL.
pub struct RawRedis<'a>(pub &'a str);

impl super::bench::RawBroker for RawRedis<'_> {
    const SUBJECT: &'static str = "raw redis-rs";
    const DESCRIPTION: &'static str = "bare redis-rs clients on the same server";

    /// Messages published one after another and counted by a subscriber.
    async fn one_way(
        &self,
        count: u64,
        size: usize,
        limit: Duration,
    ) -> anyhow::Result<(u64, Duration)> {
        let url = self.0;
        let client = redis::Client::open(coordinator_redis::connection_info(url, "url")?)?;
        let channel = channel("throughput");
        let mut subscriber = client.get_async_pubsub().await?;
        subscriber.subscribe(&channel).await?;
        let mut connection = publisher(&client).await?;
        let body = vec![0x5a; size];
        let send = async move {
            for _ in 0..count {
                publish(&mut connection, &channel, &body).await?;
            }
            anyhow::Ok(())
        };
        let mut messages = subscriber.on_message();
        let receive = super::bench::count_arrivals(&mut messages, count, limit);
        super::bench::timed_one_way(send, receive).await
    }

    /// One-way latency: published by one connection, received by the subscriber.
    async fn publish_latency(
        &self,
        samples: u64,
        size: usize,
        histogram: &mut Histogram<u64>,
    ) -> anyhow::Result<()> {
        let url = self.0;
        let client = redis::Client::open(coordinator_redis::connection_info(url, "url")?)?;
        let channel = channel("latency");
        let mut subscriber = client.get_async_pubsub().await?;
        subscriber.subscribe(&channel).await?;
        let mut connection = publisher(&client).await?;
        let body = vec![0x5a; size];
        let mut messages = subscriber.on_message();
        timed(
            samples,
            histogram,
            &mut connection,
            &channel,
            &body,
            &mut messages,
        )
        .await
    }

    /// A request published to the responder's channel, answered on the requester's.
    async fn request_latency(
        &self,
        samples: u64,
        size: usize,
        histogram: &mut Histogram<u64>,
    ) -> anyhow::Result<()> {
        let url = self.0;
        let client = redis::Client::open(coordinator_redis::connection_info(url, "url")?)?;
        let (requests, replies) = (channel("requests"), channel("replies"));
        let mut responder = client.get_async_pubsub().await?;
        responder.subscribe(&requests).await?;
        let mut requester = client.get_async_pubsub().await?;
        requester.subscribe(&replies).await?;
        let mut answer_with = publisher(&client).await?;
        let reply_channel = replies.clone();
        let answering = tokio::spawn(async move {
            let mut incoming = responder.on_message();
            while let Some(request) = incoming.next().await {
                if publish(
                    &mut answer_with,
                    &reply_channel,
                    request.get_payload_bytes(),
                )
                .await
                .is_err()
                {
                    break;
                }
            }
        });
        let mut connection = publisher(&client).await?;
        let body = vec![0x5a; size];
        let mut answers = requester.on_message();
        let result = timed(
            samples,
            histogram,
            &mut connection,
            &requests,
            &body,
            &mut answers,
        )
        .await;
        answering.abort();
        result
    }
}

/// Publishes `samples` times on `channel`, each time timing until `arrivals` yields.
async fn timed(
    samples: u64,
    histogram: &mut Histogram<u64>,
    connection: &mut MultiplexedConnection,
    channel: &str,
    body: &[u8],
    arrivals: &mut (impl futures_util::Stream<Item = redis::Msg> + Unpin),
) -> anyhow::Result<()> {
    super::bench::time_each(samples, histogram, async || {
        publish(connection, channel, body).await?;
        tokio::time::timeout(Duration::from_secs(10), arrivals.next())
            .await
            .context("raw Redis message lost")?
            .context("raw Redis subscription ended")?;
        Ok(())
    })
    .await
}
