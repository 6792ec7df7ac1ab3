//! `coordinator bench`: broadcast and point-to-point throughput, end-to-end
//! latency and request/reply latency between two nodes of one carrier, beside
//! the raw channel of the same carrier measured in the same run.

use anyhow::{Context, bail};
use bytes::Bytes;
use coordinator::config::CarrierConfig;
use coordinator::testing::MemoryNetwork;
use coordinator::{Coordinator, CoordinatorConfig, Inbox, Settings, SubscribeOptions};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Carrier to measure when no --config is given: `memory` (in-process) or
    /// `native` (two Native nodes on 127.0.0.1, beside a raw tokio-rustls echo).
    #[arg(long, default_value = "memory")]
    carrier: String,
    /// Measure the carrier of this configuration file (two nodes, ids 1 and 2, in this process).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Messages in the throughput run.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Tasks sending at once in the point-to-point throughput run, each its
    /// share of --messages (messages to one node made at once share frames).
    #[arg(long, default_value_t = 1)]
    senders: u64,
    /// Round trips measured for each latency figure.
    #[arg(long, default_value_t = 2_000)]
    samples: u64,
    /// Writes in the Raft throughput run (three more nodes running openraft
    /// through `coordinator-openraft`, beside openraft over an in-process
    /// router); 0 skips the Raft rows.
    #[arg(long, default_value_t = 5_000)]
    raft_writes: u64,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Rounds of the throughput runs and of the raw channel, then of the Raft
    /// runs (the carrier's and the router's alternating), one after the
    /// other in this process; each figure is the median of its rounds (this
    /// machine's figures move by a fifth from one run to the next).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Measure only these (comma-separated; all when not given): for a
    /// profile or an instruction count of one path.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Measure>,
}

/// One part of a bench run, for `--only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Measure {
    /// Broadcast throughput.
    Broadcast,
    /// Point-to-point throughput.
    Send,
    /// Point-to-point throughput from one task that posts
    /// (`Coordinator::post`) and awaits the outcomes later.
    Post,
    /// Broadcast and request/reply latency.
    Latency,
    /// The raw client or channel beside the carrier.
    Raw,
    /// openraft over the carrier and over the in-process router (with --raft-writes).
    Raft,
}

#[derive(Serialize)]
pub(super) struct Row {
    subject: String,
    test: &'static str,
    size: usize,
    count: u64,
    /// Messages per second (throughput rows).
    per_second: Option<f64>,
    /// Microseconds (latency rows).
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    /// Messages the receiver did not get (throughput rows).
    lost: Option<u64>,
    /// CPU time of this whole process per message (or commit), in
    /// microseconds, over the throughput run: what the run cost beside how
    /// long it took. Both nodes (all three for Raft) and the raw channel run
    /// in this process (a raw channel's connection setup is in its run); a
    /// broker's own CPU is not in it (another process).
    cpu_us: Option<f64>,
}

impl Row {
    /// One row per figure: the median of its rounds (the most lost in any
    /// round), in the order of the first round.
    fn medians(rounds: Vec<Vec<Row>>) -> Vec<Row> {
        fn median(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
            let mut values: Vec<f64> = values.flatten().collect();
            values.sort_by(f64::total_cmp);
            let middle = values.len() / 2;
            match values.len() {
                0 => None,
                n if n % 2 == 1 => Some(values[middle]),
                _ => Some((values[middle - 1] + values[middle]) / 2.0),
            }
        }
        let mut rounds = rounds.into_iter();
        let Some(first) = rounds.next() else {
            return Vec::new();
        };
        let rest: Vec<Vec<Row>> = rounds.collect();
        first
            .into_iter()
            .enumerate()
            .map(|(index, row)| {
                let same: Vec<&Row> = std::iter::once(&row)
                    .chain(rest.iter().filter_map(|round| round.get(index)))
                    .collect();
                Row {
                    per_second: median(same.iter().map(|r| r.per_second)),
                    p50_us: median(same.iter().map(|r| r.p50_us)),
                    p99_us: median(same.iter().map(|r| r.p99_us)),
                    lost: same.iter().filter_map(|r| r.lost).max(),
                    cpu_us: median(same.iter().map(|r| r.cpu_us)),
                    ..row
                }
            })
            .collect()
    }

    /// `received` of `count` messages arrived in `elapsed`.
    pub(super) fn throughput(
        subject: &str,
        test: &'static str,
        size: usize,
        count: u64,
        received: u64,
        elapsed: Duration,
    ) -> Row {
        Row {
            subject: subject.into(),
            test,
            size,
            count,
            per_second: Some(received as f64 / elapsed.as_secs_f64()),
            p50_us: None,
            p99_us: None,
            lost: Some(count - received),
            cpu_us: None,
        }
    }

    /// This process spent `cpu` on the run of a throughput row.
    pub(super) fn with_cpu(self, cpu: Duration) -> Row {
        let received = self.count - self.lost.unwrap_or(0);
        Row {
            cpu_us: (received > 0).then(|| cpu.as_secs_f64() * 1e6 / received as f64),
            ..self
        }
    }
}

/// Wall-clock and CPU time from a start.
pub(super) struct Clock {
    wall: Instant,
    cpu: Duration,
}

impl Clock {
    pub(super) fn start() -> Clock {
        Clock {
            wall: Instant::now(),
            cpu: process_cpu(),
        }
    }

    /// Time passed and CPU time this process used since the start.
    pub(super) fn elapsed(&self) -> (Duration, Duration) {
        (self.wall.elapsed(), process_cpu().saturating_sub(self.cpu))
    }
}

/// CPU time this process (all its threads) has used so far.
fn process_cpu() -> Duration {
    let time = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

const LIMIT: Duration = Duration::from_secs(120);
/// Room for a whole throughput run in the receiver's queue, so the figure is
/// the carrier's and not the reader's.
const QUEUE_CAPACITY: usize = 1 << 20;

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    // openraft warns of every vote it ignores while the Raft nodes start.
    super::init_logging("warn,openraft=error");
    let config = match &args.config {
        Some(file) => Some(
            CoordinatorConfig::from_file(file)
                .map_err(|e| anyhow::anyhow!("{}:\n{e}", file.display()))?,
        ),
        None => None,
    };
    let mut starter = match &config {
        Some(config) => Starter::Config(Box::new(config.clone())),
        None if args.carrier.eq_ignore_ascii_case("memory") => {
            Starter::Memory(MemoryNetwork::new())
        }
        #[cfg(feature = "native")]
        None if args.carrier.eq_ignore_ascii_case("native") => Starter::Native(
            coordinator_native::Loopback::new("bench").queue_capacity(QUEUE_CAPACITY),
        ),
        None => bail!(
            "unknown carrier {:?}: use --carrier memory or native, or --config FILE for another carrier",
            args.carrier
        ),
    };
    let a = starter.start(1).await?;
    let b = starter.start(2).await?;
    let subject = a.carrier().to_string();
    wait_for_peer(&a, 2).await?;
    wait_for_peer(&b, 1).await?;
    let progress = |what: &str| {
        if !args.json {
            eprintln!("measuring {what}…");
        }
    };
    let measures = |measure: Measure| args.only.is_empty() || args.only.contains(&measure);
    // A node has one inbox: the point-to-point runs read it, then the echo server.
    let mut inbox = b.inbox()?;
    let mut rounds = Vec::new();
    for _ in 0..args.rounds.max(1) {
        let mut rows = Vec::new();
        if measures(Measure::Broadcast) {
            progress(&format!(
                "{subject} broadcast throughput ({} × {} B)",
                args.messages, args.size
            ));
            rows.push(broadcast_throughput(&subject, &a, &b, args.messages, args.size).await?);
        }
        if measures(Measure::Send) {
            let senders = args.senders.clamp(1, args.messages.max(1));
            progress(&format!(
                "{subject} point-to-point throughput ({} × {} B, {senders} sending task(s))",
                args.messages, args.size
            ));
            let run = ToOne::Tasks(senders);
            rows.push(send_throughput(&subject, &a, &b, &mut inbox, &args, run).await?);
        }
        if measures(Measure::Post) {
            progress(&format!(
                "{subject} point-to-point throughput, posted ({} × {} B, one task, up to {POST_WINDOW} outcomes open)",
                args.messages, args.size
            ));
            rows.push(send_throughput(&subject, &a, &b, &mut inbox, &args, ToOne::Posted).await?);
        }
        if measures(Measure::Raw) {
            rows.extend(raw_channel_rows(&subject, config.as_ref(), &args, &progress).await?);
        }
        rounds.push(rows);
    }
    let mut rows = Row::medians(rounds);
    if measures(Measure::Latency) {
        progress(&format!(
            "{subject} broadcast latency ({} samples)",
            args.samples
        ));
        rows.push(broadcast_latency(&subject, &a, &b, args.samples, args.size).await?);
        progress(&format!(
            "{subject} request/reply latency ({} samples)",
            args.samples
        ));
        rows.push(request_latency(&subject, &a, &b, inbox, args.samples, args.size).await?);
    }
    // The carrier's rows first, then the raw channel's.
    rows.sort_by_key(|row| row.subject != subject);
    a.leave().await.ok();
    b.leave().await.ok();
    if args.raft_writes > 0 && measures(Measure::Raft) {
        // Rounds as for the throughput runs, the carrier's run and the
        // router's alternating, so that each ratio compares neighbours.
        let mut rounds = Vec::new();
        for round in 0..u64::from(args.rounds.max(1)) {
            progress(&format!(
                "{subject}: openraft, 3 nodes ({} writes, {} samples)",
                args.raft_writes, args.samples
            ));
            // Fresh ids each round: the last round's nodes have left.
            let mut nodes = Vec::new();
            for id in [11, 12, 13] {
                nodes.push(starter.start(id + 10 * round).await?);
            }
            let mut raft = super::raft_bench::rows(
                &subject,
                &nodes,
                args.raft_writes,
                args.samples,
                args.size,
            )
            .await?;
            for node in nodes {
                node.leave().await.ok();
            }
            progress("openraft over an in-process router (the limit for the library)");
            raft.extend(
                super::raft_bench::router_rows(args.raft_writes, args.samples, args.size).await?,
            );
            rounds.push(raft);
        }
        rows.extend(Row::medians(rounds));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&rows);
    }
    Ok(())
}

/// The raw channel beside the carrier: throughput, and its latency.
async fn raw_channel_rows(
    subject: &str,
    config: Option<&CoordinatorConfig>,
    args: &BenchArgs,
    progress: &impl Fn(&str),
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    if subject == "Memory" {
        progress("raw tokio channel (the limit for the Memory carrier)");
        rows.push(raw_channel_throughput(args.messages, args.size).await?);
        rows.push(raw_channel_latency(args.samples, args.size).await?);
    }
    #[cfg(feature = "native")]
    if subject == "Native" {
        progress("raw tokio-rustls echo over loopback (the limit for the Native carrier)");
        rows.extend(raw_tls_rows(args.messages, args.samples, args.size).await?);
    }
    if let Some(config) = config {
        rows.extend(raw_rows(&config.carrier, args, progress).await?);
    }
    Ok(rows)
}

/// Starts the measured nodes, whatever the carrier.
enum Starter {
    Config(Box<CoordinatorConfig>),
    Memory(Arc<MemoryNetwork>),
    #[cfg(feature = "native")]
    Native(coordinator_native::Loopback),
}

impl Starter {
    async fn start(&mut self, id: u64) -> anyhow::Result<Arc<dyn Coordinator>> {
        Ok(match self {
            Starter::Config(config) => {
                let mut config = config.as_ref().clone();
                config.cluster.node_id = Some(id);
                Arc::new(coordinator::start(&config).await?)
            }
            Starter::Memory(network) => Arc::new(
                network.start(
                    Settings::new(id)
                        .cluster_key("bench-cluster-key")
                        .queue_capacity(QUEUE_CAPACITY),
                )?,
            ),
            #[cfg(feature = "native")]
            Starter::Native(launcher) => Arc::new(launcher.start(id).await?),
        })
    }
}

async fn wait_for_peer(node: &Arc<dyn Coordinator>, peer: u64) -> anyhow::Result<()> {
    let seen = tokio::time::timeout(
        Duration::from_secs(30),
        coordinator::wait_for_members(node.as_ref(), &[peer]),
    )
    .await;
    anyhow::ensure!(
        seen == Ok(true),
        "node {} never saw node {peer}",
        node.node_id()
    );
    Ok(())
}

fn payload(size: usize) -> Bytes {
    Bytes::from(vec![0x5a; size])
}

/// How many messages the receiving loop takes at most per wake-up.
const TAKE_AT_ONCE: usize = 1024;

/// Where a throughput run's messages arrive, and room for a burst of them.
enum Incoming<'a> {
    Broadcasts(
        &'a mut coordinator::Subscription,
        Vec<coordinator::BroadcastMessage>,
    ),
    Inbox(&'a mut Inbox, Vec<coordinator::Incoming>),
}

impl Incoming<'_> {
    /// Takes every message that waits (up to [`TAKE_AT_ONCE`]), or waits for
    /// the next one: how many it took, as an application that handles a
    /// burst at a time would.
    async fn take(&mut self) -> anyhow::Result<u64> {
        let taken = match self {
            Incoming::Broadcasts(subscription, buffer) => {
                buffer.clear();
                subscription.recv_many(buffer, TAKE_AT_ONCE).await
            }
            Incoming::Inbox(inbox, buffer) => {
                buffer.clear();
                inbox.recv_many(buffer, TAKE_AT_ONCE).await
            }
        };
        anyhow::ensure!(taken > 0, "the receiving node stopped");
        Ok(taken as u64)
    }
}

async fn broadcast_throughput(
    subject: &str,
    a: &Arc<dyn Coordinator>,
    b: &Arc<dyn Coordinator>,
    count: u64,
    size: usize,
) -> anyhow::Result<Row> {
    let mut subscription = b
        .subscribe("bench.throughput", SubscribeOptions::default())
        .await?;
    let lost = || b.stats().messages_lost + b.stats().dropped_overflow;
    let lost_before = lost();
    let sending = Clock::start();
    let sender = spawn_sender(a.clone(), None, count, size);
    let mut incoming = Incoming::Broadcasts(&mut subscription, Vec::new());
    let lost_now = || lost() - lost_before;
    let received = receive(&mut incoming, count, lost_now).await?;
    throughput_row(
        subject,
        "broadcast throughput",
        size,
        count,
        received,
        sending,
        sender,
    )
    .await
}

/// How the point-to-point run sends.
#[derive(Clone, Copy)]
enum ToOne {
    /// This many tasks at once, each awaiting every `send`.
    Tasks(u64),
    /// One task posting, awaiting the outcomes later.
    Posted,
}

/// Outcomes of posted messages a posting task keeps open before it awaits
/// the oldest: as an application that pipelines its sends would.
const POST_WINDOW: usize = 4096;

async fn send_throughput(
    subject: &str,
    a: &Arc<dyn Coordinator>,
    b: &Arc<dyn Coordinator>,
    inbox: &mut Inbox,
    args: &BenchArgs,
    run: ToOne,
) -> anyhow::Result<Row> {
    let (count, size, to) = (args.messages, args.size, b.node_id());
    let sending = Clock::start();
    let (sender, test) = match run {
        ToOne::Tasks(senders) => {
            let tasks: Vec<_> = (0..senders)
                .map(|task| {
                    // The first tasks take one more when the count does not divide.
                    let share = count / senders + u64::from(task < count % senders);
                    spawn_sender(a.clone(), Some(to), share, size)
                })
                .collect();
            let sender = tokio::spawn(async move {
                for task in tasks {
                    task.await??;
                }
                Ok(())
            });
            let test = if senders == 1 {
                "send throughput"
            } else {
                "send throughput, tasks at once"
            };
            (sender, test)
        }
        ToOne::Posted => (spawn_poster(a.clone(), to, count, size), "post throughput"),
    };
    let received = receive(&mut Incoming::Inbox(inbox, Vec::new()), count, || 0).await?;
    throughput_row(subject, test, size, count, received, sending, sender).await
}

/// Posts `count` messages to `to` from a task of its own, keeping up to
/// [`POST_WINDOW`] outcomes open.
fn spawn_poster(
    node: Arc<dyn Coordinator>,
    to: u64,
    count: u64,
    size: usize,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let body = payload(size);
    tokio::spawn(async move {
        let mut open = std::collections::VecDeque::with_capacity(POST_WINDOW);
        for _ in 0..count {
            if open.len() == POST_WINDOW
                && let Some(oldest) = open.pop_front()
            {
                oldest.await?;
            }
            open.push_back(node.post(to, body.clone()).await?);
        }
        for outcome in open {
            outcome.await?;
        }
        Ok(())
    })
}

/// Sends `count` messages from a task of their own: to one node, or broadcast.
fn spawn_sender(
    node: Arc<dyn Coordinator>,
    to: Option<u64>,
    count: u64,
    size: usize,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let body = payload(size);
    tokio::spawn(async move {
        for _ in 0..count {
            match to {
                Some(to) => node.send(to, body.clone()).await?,
                None => node.broadcast("bench.throughput", body.clone()).await?,
            }
        }
        Ok(())
    })
}

/// Counts arrivals until `count` are in (or reported lost), or time runs out.
/// Losses are looked up only when nothing is waiting: a node's statistics
/// cost more than taking a message, and the raw clients beside it pay no
/// such price per message.
async fn receive(
    incoming: &mut Incoming<'_>,
    count: u64,
    lost: impl Fn() -> u64,
) -> anyhow::Result<u64> {
    let mut received = 0u64;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while received < count {
        let waiting = tokio::select! {
            biased;
            taken = incoming.take() => Some(taken?),
            () = std::future::ready(()) => None,
        };
        if let Some(taken) = waiting {
            received += taken;
            // Taking what waits never yields by itself.
            tokio::task::coop::consume_budget().await;
            continue;
        }
        if received + lost() >= count {
            break;
        }
        match tokio::time::timeout_at(deadline, incoming.take()).await {
            Ok(taken) => received += taken?,
            Err(_) => break,
        }
    }
    Ok(received)
}

async fn throughput_row(
    subject: &str,
    test: &'static str,
    size: usize,
    count: u64,
    received: u64,
    started: Clock,
    sender: tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<Row> {
    let (elapsed, cpu) = started.elapsed();
    sender.await??;
    Ok(Row::throughput(subject, test, size, count, received, elapsed).with_cpu(cpu))
}

#[cfg(feature = "native")]
async fn raw_tls_rows(count: u64, samples: u64, size: usize) -> anyhow::Result<Vec<Row>> {
    const SUBJECT: &str = "raw tokio-rustls";
    let clock = Clock::start();
    let (received, elapsed) = super::raw_tls::one_way(count, size, LIMIT).await?;
    let (_, cpu) = clock.elapsed();
    let mut histogram = histogram();
    super::raw_tls::round_trips(samples, size, &mut histogram).await?;
    Ok(vec![
        Row::throughput(
            SUBJECT,
            "one-way throughput",
            size,
            count,
            received,
            elapsed,
        )
        .with_cpu(cpu),
        latency_row(SUBJECT, "round trip (echo)", size, &histogram),
    ])
}

/// The rows of the bare client of `carrier`'s broker, when it has one.
#[allow(unused_variables)]
async fn raw_rows(
    carrier: &CarrierConfig,
    args: &BenchArgs,
    progress: &impl Fn(&str),
) -> anyhow::Result<Vec<Row>> {
    match carrier {
        #[cfg(feature = "nats")]
        CarrierConfig::Nats(nats) => {
            raw_broker_rows(&super::raw_nats::RawNats(nats), args, progress).await
        }
        #[cfg(feature = "kafka")]
        CarrierConfig::Kafka(kafka) => {
            raw_broker_rows(&super::raw_kafka::RawKafka(kafka), args, progress).await
        }
        #[cfg(feature = "zenoh")]
        CarrierConfig::Zenoh(zenoh) => {
            raw_broker_rows(&super::raw_zenoh::RawZenoh(zenoh), args, progress).await
        }
        #[cfg(feature = "redis")]
        CarrierConfig::Redis(redis) => {
            raw_broker_rows(&super::raw_redis::RawRedis(&redis.url), args, progress).await
        }
        // A classic PUBLISH to any node reaches the whole cluster.
        #[cfg(feature = "redis")]
        CarrierConfig::RedisCluster(cluster) => match cluster.urls.first() {
            Some(url) => raw_broker_rows(&super::raw_redis::RawRedis(url), args, progress).await,
            None => Ok(Vec::new()),
        },
        _ => Ok(Vec::new()),
    }
}

/// A bare client of a broker: the limit its carrier is measured against.
#[cfg(any(
    feature = "nats",
    feature = "redis",
    feature = "kafka",
    feature = "zenoh"
))]
pub(super) trait RawBroker {
    const SUBJECT: &'static str;
    /// What it is, for the progress line.
    const DESCRIPTION: &'static str;
    /// Messages published back to back and counted by a subscriber: how many
    /// arrived, and the time until the last one did.
    async fn one_way(
        &self,
        count: u64,
        size: usize,
        limit: Duration,
    ) -> anyhow::Result<(u64, Duration)>;
    /// Publish-to-receive latency, one message at a time.
    async fn publish_latency(
        &self,
        samples: u64,
        size: usize,
        histogram: &mut Histogram<u64>,
    ) -> anyhow::Result<()>;
    /// Request/reply latency, one request at a time.
    async fn request_latency(
        &self,
        samples: u64,
        size: usize,
        histogram: &mut Histogram<u64>,
    ) -> anyhow::Result<()>;
}

/// Times `samples` runs of `one` (a round trip each) into `histogram`.
pub(super) async fn time_each(
    samples: u64,
    histogram: &mut Histogram<u64>,
    mut one: impl AsyncFnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for _ in 0..samples {
        let sent = Instant::now();
        one().await?;
        histogram.record(sent.elapsed().as_nanos() as u64)?;
    }
    Ok(())
}

/// Runs `send` in a task of its own while `receive` counts arrivals: how many
/// arrived, and the time from the start until the last one did.
#[cfg(any(
    feature = "nats",
    feature = "redis",
    feature = "kafka",
    feature = "zenoh"
))]
pub(super) async fn timed_one_way(
    send: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    receive: impl Future<Output = u64>,
) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let sending = tokio::spawn(send);
    let received = receive.await;
    let elapsed = started.elapsed();
    sending.await??;
    Ok((received, elapsed))
}

/// Counts what `arrivals` yields, up to `count`, until `limit` has passed.
#[cfg(any(
    feature = "nats",
    feature = "redis",
    feature = "kafka",
    feature = "zenoh"
))]
pub(super) async fn count_arrivals<S: futures_util::Stream + Unpin>(
    arrivals: &mut S,
    count: u64,
    limit: Duration,
) -> u64 {
    use futures_util::StreamExt;
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + limit;
    while received < count {
        match tokio::time::timeout_at(deadline, arrivals.next()).await {
            Ok(Some(_)) => received += 1,
            Ok(None) | Err(_) => break,
        }
    }
    received
}

/// The rows of a raw broker client: publish throughput and latency, request/reply latency.
#[cfg(any(
    feature = "nats",
    feature = "redis",
    feature = "kafka",
    feature = "zenoh"
))]
async fn raw_broker_rows<R: RawBroker>(
    raw: &R,
    args: &BenchArgs,
    progress: &impl Fn(&str),
) -> anyhow::Result<Vec<Row>> {
    progress(&format!("{} (the limit for the carrier)", R::DESCRIPTION));
    let (count, samples, size) = (args.messages, args.samples, args.size);
    let clock = Clock::start();
    let (received, elapsed) = raw.one_way(count, size, LIMIT).await?;
    let (_, cpu) = clock.elapsed();
    let mut publish = histogram();
    raw.publish_latency(samples, size, &mut publish).await?;
    let mut request = histogram();
    raw.request_latency(samples, size, &mut request).await?;
    Ok(vec![
        Row::throughput(
            R::SUBJECT,
            "publish throughput",
            size,
            count,
            received,
            elapsed,
        )
        .with_cpu(cpu),
        latency_row(R::SUBJECT, "publish latency", size, &publish),
        latency_row(R::SUBJECT, "request/reply latency", size, &request),
    ])
}

pub(super) fn latency_row(
    subject: &str,
    test: &'static str,
    size: usize,
    histogram: &Histogram<u64>,
) -> Row {
    Row {
        subject: subject.into(),
        test,
        size,
        count: histogram.len(),
        per_second: None,
        p50_us: Some(histogram.value_at_quantile(0.5) as f64 / 1000.0),
        p99_us: Some(histogram.value_at_quantile(0.99) as f64 / 1000.0),
        lost: None,
        cpu_us: None,
    }
}

pub(super) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

async fn broadcast_latency(
    subject: &str,
    a: &Arc<dyn Coordinator>,
    b: &Arc<dyn Coordinator>,
    samples: u64,
    size: usize,
) -> anyhow::Result<Row> {
    let mut subscription = b
        .subscribe("bench.latency", SubscribeOptions::default())
        .await?;
    let body = payload(size);
    let mut histogram = histogram();
    time_each(samples, &mut histogram, async || {
        a.broadcast("bench.latency", body.clone()).await?;
        tokio::time::timeout(LIMIT, subscription.recv())
            .await
            .context("broadcast lost")?
            .context("subscription closed")?;
        Ok(())
    })
    .await?;
    Ok(latency_row(subject, "broadcast latency", size, &histogram))
}

async fn request_latency(
    subject: &str,
    a: &Arc<dyn Coordinator>,
    b: &Arc<dyn Coordinator>,
    mut inbox: Inbox,
    samples: u64,
    size: usize,
) -> anyhow::Result<Row> {
    let server = tokio::spawn(async move {
        while let Some(request) = inbox.recv().await {
            let payload = request.payload.clone();
            let _ = request.reply(payload).await;
        }
    });
    let body = payload(size);
    let mut histogram = histogram();
    time_each(samples, &mut histogram, async || {
        a.request(b.node_id(), body.clone(), Duration::from_secs(10))
            .await?;
        Ok(())
    })
    .await?;
    server.abort();
    Ok(latency_row(
        subject,
        "request/reply latency",
        size,
        &histogram,
    ))
}

async fn raw_channel_throughput(count: u64, size: usize) -> anyhow::Result<Row> {
    let (sender, mut receiver) = mpsc::channel::<Bytes>(65_536);
    let body = payload(size);
    let started = Clock::start();
    let producer = tokio::spawn(async move {
        for _ in 0..count {
            if sender.send(body.clone()).await.is_err() {
                break;
            }
        }
    });
    // Bursts at a time, as the carriers' receiving loop takes them.
    let mut received = 0;
    let mut buffer = Vec::with_capacity(TAKE_AT_ONCE);
    while received < count {
        buffer.clear();
        match receiver.recv_many(&mut buffer, TAKE_AT_ONCE).await {
            0 => break,
            taken => received += taken as u64,
        }
    }
    let (elapsed, cpu) = started.elapsed();
    producer.await?;
    Ok(Row::throughput(
        "raw tokio mpsc",
        "broadcast throughput",
        size,
        count,
        received,
        elapsed,
    )
    .with_cpu(cpu))
}

async fn raw_channel_latency(samples: u64, size: usize) -> anyhow::Result<Row> {
    let (to_server, mut server_in) = mpsc::channel::<Bytes>(1);
    let (to_client, mut client_in) = mpsc::channel::<Bytes>(1);
    let echo = tokio::spawn(async move {
        while let Some(message) = server_in.recv().await {
            if to_client.send(message).await.is_err() {
                break;
            }
        }
    });
    let body = payload(size);
    let mut histogram = histogram();
    time_each(samples, &mut histogram, async || {
        to_server.send(body.clone()).await?;
        client_in.recv().await.context("echo stopped")?;
        Ok(())
    })
    .await?;
    echo.abort();
    Ok(latency_row(
        "raw tokio mpsc",
        "request/reply latency",
        size,
        &histogram,
    ))
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<16} {:<24} {:>7} {:>9} {:>14} {:>10} {:>10} {:>6} {:>10}",
        "carrier", "test", "size B", "count", "msg/s", "p50 µs", "p99 µs", "lost", "cpu µs/op"
    );
    let show = |value: Option<f64>, precision: usize| {
        value.map_or("-".to_string(), |v| format!("{v:.precision$}"))
    };
    for row in rows {
        println!(
            "{:<16} {:<24} {:>7} {:>9} {:>14} {:>10} {:>10} {:>6} {:>10}",
            row.subject,
            row.test,
            row.size,
            row.count,
            show(row.per_second, 0),
            show(row.p50_us, 1),
            show(row.p99_us, 1),
            row.lost.map_or("-".to_string(), |l| l.to_string()),
            show(row.cpu_us, 2),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(test: &'static str, per_second: f64, p50: Option<f64>, lost: u64) -> Row {
        Row {
            subject: "Memory".into(),
            test,
            size: 128,
            count: 10,
            per_second: Some(per_second),
            p50_us: p50,
            p99_us: None,
            lost: Some(lost),
            cpu_us: Some(per_second / 10.0),
        }
    }

    #[test]
    fn each_figure_is_the_median_of_its_rounds_and_the_worst_loss() {
        let rounds = vec![
            vec![row("a", 30.0, Some(5.0), 0), row("b", 1.0, None, 0)],
            vec![row("a", 10.0, Some(9.0), 2), row("b", 3.0, None, 0)],
            vec![row("a", 20.0, Some(7.0), 1), row("b", 2.0, None, 0)],
        ];
        let rows = Row::medians(rounds);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].test, rows[0].per_second), ("a", Some(20.0)));
        assert_eq!((rows[0].p50_us, rows[0].lost), (Some(7.0), Some(2)));
        assert_eq!((rows[1].test, rows[1].per_second), ("b", Some(2.0)));
        assert_eq!(rows[1].p50_us, None);
        assert_eq!(rows[0].cpu_us, Some(2.0));
        // An even number of rounds: the mean of the middle two.
        let rows = Row::medians(vec![
            vec![row("a", 10.0, None, 0)],
            vec![row("a", 20.0, None, 0)],
        ]);
        assert_eq!(rows[0].per_second, Some(15.0));
    }
}
