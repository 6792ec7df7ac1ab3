//! The limit for the NATS carrier: two bare async-nats clients on the same
//! server, with the same options, publishing and answering on their own subjects.

use anyhow::Context;
use bytes::Bytes;
use coordinator::config::NatsConfig;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use std::time::Duration;

async fn client(config: &NatsConfig) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .client_capacity(config.capacity_client as usize)
        .subscription_capacity(config.capacity_subscription as usize)
        .read_buffer_capacity(config.capacity_read_buffer as u16)
        .require_tls(config.use_tls);
    if config.no_echo {
        options = options.no_echo();
    }
    // The carrier's credentials, applied the carrier's way.
    let options = coordinator_nats::authenticate(options, config)?;
    let addresses: Vec<async_nats::ServerAddr> = config
        .addresses
        .iter()
        .map(|address| address.parse())
        .collect::<Result<_, _>>()
        .context("nats.addresses")?;
    Ok(options.connect(addresses).await?)
}

/// Waits until a message published by `sender` on `subject` reaches
/// `subscription`. A flushed subscription can still miss what another client
/// publishes for a moment on a busy server (nats-server issue 2876); the
/// carrier's own nodes wait for each other's heartbeats before they count.
/// Probes are numbered: once the latest one is in, every earlier one that
/// will ever come has come (NATS keeps one publisher's order), so none can
/// be counted as a measured message.
async fn reachable(
    sender: &async_nats::Client,
    subject: &str,
    subscription: &mut async_nats::Subscriber,
) -> anyhow::Result<()> {
    for probe in 0..100u32 {
        let body = Bytes::from(format!("probe {probe}"));
        sender.publish(subject.to_string(), body.clone()).await?;
        sender.flush().await?;
        let latest_in = async {
            while let Some(message) = subscription.next().await {
                if message.payload == body {
                    return true;
                }
            }
            false
        };
        if let Ok(true) = tokio::time::timeout(Duration::from_millis(50), latest_in).await {
            return Ok(());
        }
    }
    anyhow::bail!("raw NATS: nothing published on {subject} arrived in 100 tries")
}

fn subject(what: &str) -> String {
    format!("bench-raw.{what}.{}", std::process::id())
}

/// Two bare async-nats clients with the options of this configuration.
pub struct RawNats<'a>(pub &'a NatsConfig);

impl super::bench::RawBroker for RawNats<'_> {
    const SUBJECT: &'static str = "raw async-nats";
    const DESCRIPTION: &'static str = "two bare async-nats clients on the same server";

    /// Messages published back to back by one client and counted by the other.
    async fn one_way(
        &self,
        count: u64,
        size: usize,
        limit: Duration,
    ) -> anyhow::Result<(u64, Duration)> {
        let config = self.0;
        let (sender, receiver) = (client(config).await?, client(config).await?);
        let subject = subject("throughput");
        let mut subscription = receiver.subscribe(subject.clone()).await?;
        receiver.flush().await?;
        reachable(&sender, &subject, &mut subscription).await?;
        let body = Bytes::from(vec![0x5a; size]);
        let send = async move {
            for _ in 0..count {
                sender.publish(subject.clone(), body.clone()).await?;
            }
            sender.flush().await?;
            anyhow::Ok(())
        };
        let receive = super::bench::count_arrivals(&mut subscription, count, limit);
        super::bench::timed_one_way(send, receive).await
    }

    /// One-way latency: published by one client, received by the other.
    async fn publish_latency(
        &self,
        samples: u64,
        size: usize,
        histogram: &mut Histogram<u64>,
    ) -> anyhow::Result<()> {
        let config = self.0;
        let (sender, receiver) = (client(config).await?, client(config).await?);
        let subject = subject("latency");
        let mut subscription = receiver.subscribe(subject.clone()).await?;
        receiver.flush().await?;
        reachable(&sender, &subject, &mut subscription).await?;
        let body = Bytes::from(vec![0x5a; size]);
        super::bench::time_each(samples, histogram, async || {
            sender.publish(subject.clone(), body.clone()).await?;
            tokio::time::timeout(Duration::from_secs(10), subscription.next())
                .await
                .context("raw NATS message lost")?
                .context("raw NATS subscription ended")?;
            Ok(())
        })
        .await
    }

    /// Request/reply through NATS's own reply subjects.
    async fn request_latency(
        &self,
        samples: u64,
        size: usize,
        histogram: &mut Histogram<u64>,
    ) -> anyhow::Result<()> {
        let config = self.0;
        let (requester, responder) = (client(config).await?, client(config).await?);
        let subject = subject("request");
        let mut requests = responder.subscribe(subject.clone()).await?;
        responder.flush().await?;
        let answering = tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                if let Some(reply) = request.reply {
                    let _ = responder.publish(reply, request.payload).await;
                }
            }
        });
        let body = Bytes::from(vec![0x5a; size]);
        // A server under load can answer "no responders" for a moment after
        // the responder's subscription was flushed (nats-server issue
        // 2876): wait until one request gets through before timing any.
        let mut attempts = 0;
        loop {
            match requester.request(subject.clone(), body.clone()).await {
                Ok(_) => break,
                Err(error)
                    if error.kind() == async_nats::RequestErrorKind::NoResponders
                        && attempts < 100 =>
                {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => return Err(error).context("raw NATS request before timing"),
            }
        }
        let timed = super::bench::time_each(samples, histogram, async || {
            requester.request(subject.clone(), body.clone()).await?;
            Ok(())
        })
        .await;
        answering.abort();
        timed?;
        Ok(())
    }
}
