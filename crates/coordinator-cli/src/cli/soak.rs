//! `coordinator soak`: Native nodes on 127.0.0.1 with default timing, under
//! steady traffic, while busy threads keep every core loaded; every suspicion
//! and death of these (healthy) nodes is counted. A death fails the run.

use super::ms;
use anyhow::{Context, bail};
use bytes::Bytes;
use coordinator::{Coordinator, MemberChange, Node, SubscribeOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct SoakArgs {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..=50))]
    nodes: u64,
    /// How long to run, e.g. `10m` or `90s`.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Threads that spin for the whole run (default: one per core).
    #[arg(long)]
    busy_threads: Option<usize>,
    /// Broadcasts per second from each node.
    #[arg(long, default_value_t = 100)]
    rate: u64,
}

#[derive(Default)]
struct Counts {
    suspected: AtomicU64,
    died: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    gaps: AtomicU64,
    requests: AtomicU64,
    request_failures: AtomicU64,
}

pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    super::init_logging("error");
    let mut launcher = coordinator_native::Loopback::new("soak");
    let mut nodes: Vec<Arc<Node>> = Vec::new();
    for id in 1..=args.nodes {
        nodes.push(Arc::new(launcher.start(id).await?));
    }
    let ids: Vec<u64> = nodes.iter().map(|n| n.node_id()).collect();
    for node in &nodes {
        let formed = tokio::time::timeout(
            Duration::from_secs(10),
            coordinator::wait_for_members(node.as_ref(), &ids),
        )
        .await;
        anyhow::ensure!(formed == Ok(true), "the cluster did not form in 10 s");
    }
    let busy = args.busy_threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
    });
    println!(
        "soak: {} Native nodes (heartbeat 250 ms, suspect 750 ms, dead 1250 ms), {} broadcasts/s each, {busy} busy threads, for {}",
        args.nodes,
        args.rate,
        humantime::format_duration(args.duration)
    );
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + args.duration;
    let burners: Vec<_> = (0..busy)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    for _ in 0..10_000 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                }
            })
        })
        .collect();
    let mut tasks = Vec::new();
    for node in &nodes {
        tasks.push(tokio::spawn(watch_members(node.clone(), counts.clone())));
        tasks.push(tokio::spawn(watch_gaps(node.clone(), counts.clone())));
        tasks.push(tokio::spawn(
            count_broadcasts(node.clone(), counts.clone()).await?,
        ));
        tasks.push(tokio::spawn(answer_requests(node.clone())?));
    }
    for (index, node) in nodes.iter().enumerate() {
        let next = ids[(index + 1) % ids.len()];
        tasks.push(tokio::spawn(traffic(
            node.clone(),
            next,
            args.rate,
            deadline,
            counts.clone(),
        )));
    }
    let mut report = tokio::time::interval(Duration::from_secs(30));
    report.tick().await;
    while Instant::now() < deadline {
        tokio::select! {
            _ = report.tick() => {}
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        println!(
            "[{:>7.0} s] suspicions {}, deaths {}, broadcasts received {}, requests {} ({} failed)",
            started.elapsed().as_secs_f64(),
            counts.suspected.load(Ordering::Relaxed),
            counts.died.load(Ordering::Relaxed),
            counts.received.load(Ordering::Relaxed),
            counts.requests.load(Ordering::Relaxed),
            counts.request_failures.load(Ordering::Relaxed),
        );
    }
    stop.store(true, Ordering::Relaxed);
    for burner in burners {
        burner.join().ok();
    }
    tasks.iter().for_each(|task| task.abort());
    let alive = nodes.iter().all(|node| {
        node.members()
            .iter()
            .all(|m| m.state == coordinator::MemberState::Alive)
    });
    for node in &nodes {
        node.leave().await.ok();
    }
    let died = counts.died.load(Ordering::Relaxed);
    let expected = counts.sent.load(Ordering::Relaxed) * (args.nodes - 1);
    println!(
        "\n{} of soak: {} suspicions, {died} deaths of healthy nodes; {} of {expected} broadcast deliveries, {} reported lost",
        ms(started.elapsed()),
        counts.suspected.load(Ordering::Relaxed),
        counts.received.load(Ordering::Relaxed),
        counts.gaps.load(Ordering::Relaxed),
    );
    if died > 0 || !alive {
        bail!("a healthy node was declared dead");
    }
    Ok(())
}

async fn watch_gaps(node: Arc<Node>, counts: Arc<Counts>) {
    let mut events = node.events();
    while let Some(event) = events.next_event().await {
        if let coordinator::Event::Gap { count, .. } = event {
            counts.gaps.fetch_add(count, Ordering::Relaxed);
        }
    }
}

async fn watch_members(node: Arc<Node>, counts: Arc<Counts>) {
    let mut events = node.member_events();
    while let Some(event) = events.next_event().await {
        match event.change {
            MemberChange::Suspected => {
                counts.suspected.fetch_add(1, Ordering::Relaxed);
                println!(
                    "  node {} suspects node {}",
                    node.node_id(),
                    event.member.id
                );
            }
            MemberChange::Died => {
                counts.died.fetch_add(1, Ordering::Relaxed);
                println!(
                    "  node {} declares node {} dead",
                    node.node_id(),
                    event.member.id
                );
            }
            _ => {}
        }
    }
}

async fn count_broadcasts(
    node: Arc<Node>,
    counts: Arc<Counts>,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let mut subscription = node
        .subscribe("soak", SubscribeOptions::default())
        .await
        .context("subscribe")?;
    Ok(async move {
        while subscription.recv().await.is_some() {
            counts.received.fetch_add(1, Ordering::Relaxed);
        }
    })
}

fn answer_requests(node: Arc<Node>) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let mut inbox = node.inbox()?;
    Ok(async move {
        while let Some(request) = inbox.recv().await {
            let payload = request.payload.clone();
            let _ = request.reply(payload).await;
        }
    })
}

async fn traffic(node: Arc<Node>, next: u64, rate: u64, deadline: Instant, counts: Arc<Counts>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate.max(1) as u32);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let body = Bytes::from(vec![0x42; 256]);
    let mut sent = 0u64;
    while Instant::now() < deadline {
        ticks.tick().await;
        if node.broadcast("soak", body.clone()).await.is_ok() {
            counts.sent.fetch_add(1, Ordering::Relaxed);
        }
        sent += 1;
        if sent.is_multiple_of(10) {
            counts.requests.fetch_add(1, Ordering::Relaxed);
            if node
                .request(next, body.clone(), Duration::from_secs(2))
                .await
                .is_err()
            {
                counts.request_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
