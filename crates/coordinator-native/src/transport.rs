//! The running carrier: binds the port, runs the gossip, the listener and one
//! outbound connection per peer, and implements [`Transport`].

use crate::handshake::{self, AuthKey, Hello};
use crate::peer::Offer;
use crate::swim::{GossipCodec, Output, Swim, SwimConfig};
use crate::tls::{self, Tls};
use crate::{gossip, listener, peer};
use async_trait::async_trait;
use bytes::Bytes;
use coordinator_core::config::NativeConfig;
use coordinator_core::envelope::{Kind, peek_kind};
use coordinator_core::testing::Faults;
use coordinator_core::transport::{Inbound, InboundSender, Link, Transport};
use coordinator_core::{DropReason, Error, MemberState, NodeId, Settings, TransportError};
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsStream;

/// Handshakes allowed in flight at once (slow or silent clients cannot hold more sockets).
const MAX_HANDSHAKES: usize = 256;

/// Options beyond the configuration (tests).
#[derive(Clone, Default)]
pub struct NativeOptions {
    /// Partitions applied to gossip and state exchanges (the engine applies the
    /// same faults to messages).
    pub faults: Option<Arc<Faults>>,
}

/// Starts the carrier for a node. `settings.incarnation` must be set (the
/// gossip announces it before the engine starts).
pub async fn connect(
    config: &NativeConfig,
    settings: &Settings,
    options: NativeOptions,
) -> Result<(Link, Arc<NativeTransport>), Error> {
    let run = settings.incarnation.ok_or_else(|| {
        Error::Start("the Native carrier needs the node's incarnation before it starts".into())
    })?;
    let cluster_key = settings.cluster_key.as_ref().ok_or_else(|| {
        Error::Start(
            "clusterKey: the Native carrier needs a cluster key (every connection and datagram is authenticated with it)".into(),
        )
    })?;
    let key = cluster_key.expose().as_bytes();
    let tls = tls::build(config)?;
    let (listener, udp) = bind(config).await?;
    let local = listener
        .local_addr()
        .map_err(|error| Error::Start(format!("native: {error}")))?;
    let seeds = resolve_seeds(&config.seed_nodes).await;
    let advertise = advertise_addr(config, local.port(), &seeds).await?;
    let swim_config = SwimConfig::from_timing(
        settings.heartbeat_interval,
        settings.suspect_timeout,
        settings.dead_timeout,
    );
    let swim = Swim::new(
        swim_config,
        settings.node_id,
        run,
        advertise,
        seeds,
        Instant::now(),
        rand::random(),
    );
    let (inbound_sender, inbound) = coordinator_core::transport::inbound();
    let (reports, report_queue) = mpsc::unbounded_channel();
    let shared = Arc::new_cyclic(|this| NativeTransport {
        this: this.clone(),
        id: settings.node_id,
        run,
        advertise,
        local,
        config: config.clone(),
        max_frame: settings.max_message_size + 64,
        keepalive: settings.heartbeat_interval,
        stall_after: settings.dead_timeout,
        send_timeout: settings.send_timeout,
        auth: AuthKey::derive(key, &settings.cluster),
        tls,
        swim: Mutex::new(swim),
        codec: Mutex::new(GossipCodec::new(AuthKey::gossip_key(
            key,
            &settings.cluster,
        ))),
        udp,
        inbound: inbound_sender.clone(),
        reports,
        peers: Mutex::new(HashMap::new()),
        live: RwLock::new(Arc::new(HashMap::new())),
        wake: Notify::new(),
        faults: options.faults,
        handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
        syncing: Mutex::new(HashSet::new()),
        tasks: Mutex::new(Vec::new()),
        closed: AtomicBool::new(false),
        shutdown: tokio::sync::watch::channel(false).0,
        joined: tokio::sync::watch::channel(false).0,
    });
    let span = tracing::info_span!("native", node = settings.node_id);
    let tasks = vec![
        spawn_in(&span, forward_reports(report_queue, inbound_sender)),
        spawn_in(&span, listener::accept_loop(shared.clone(), listener)),
        spawn_in(&span, gossip::receive_loop(shared.clone())),
        spawn_in(&span, gossip::timer_loop(shared.clone())),
    ];
    shared.tasks.lock().extend(tasks);
    tracing::info!(parent: &span, %local, %advertise, "native carrier listening");
    // The first join of the seeds goes out now; wait for one to answer, so that
    // the node starts knowing the cluster (the gossip keeps trying if none does).
    let mut joined = shared.joined.subscribe();
    shared.with_swim(|_| {});
    if !config.seed_nodes.is_empty()
        && tokio::time::timeout(config.timeout, joined.wait_for(|joined| *joined))
            .await
            .is_err()
    {
        tracing::warn!(parent: &span, seeds = ?config.seed_nodes, "no seed node answered yet; still trying");
    }
    let link = Link {
        transport: shared.clone(),
        inbound,
    };
    Ok((link, shared))
}

fn spawn_in(
    span: &tracing::Span,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    use tracing::Instrument;
    tokio::spawn(task.instrument(span.clone()))
}

/// Member reports and refusals reach the engine in the order they were made
/// (they are made under the gossip's lock, so they are handed over from here).
async fn forward_reports(mut queue: mpsc::UnboundedReceiver<Inbound>, inbound: InboundSender) {
    while let Some(item) = queue.recv().await {
        if !inbound.deliver(item) {
            return;
        }
    }
}

/// TCP and UDP on the same port number (a free one when `port` is 0).
async fn bind(config: &NativeConfig) -> Result<(TcpListener, UdpSocket), Error> {
    let fail = |error: std::io::Error| {
        Error::Start(format!(
            "native: cannot listen on {}:{}: {error}",
            config.bind_addr, config.port
        ))
    };
    for _ in 0..20 {
        let listener = TcpListener::bind((config.bind_addr, config.port))
            .await
            .map_err(fail)?;
        let port = listener.local_addr().map_err(fail)?.port();
        match UdpSocket::bind((config.bind_addr, port)).await {
            Ok(udp) => return Ok((listener, udp)),
            Err(error) if config.port != 0 => return Err(fail(error)),
            Err(_) => continue,
        }
    }
    Err(Error::Start(
        "native: no port free for both TCP and UDP".into(),
    ))
}

async fn resolve_seeds(seeds: &[String]) -> Vec<SocketAddr> {
    let mut resolved = Vec::new();
    for seed in seeds {
        match tokio::net::lookup_host(seed.as_str()).await {
            Ok(addrs) => resolved.extend(addrs.take(1)),
            Err(error) => tracing::warn!(seed, %error, "seed node not resolved; skipped"),
        }
    }
    resolved
}

/// What other nodes dial: `advertiseAddr`, else the bind address when it is a
/// real one, else the address this host uses to reach the first seed.
async fn advertise_addr(
    config: &NativeConfig,
    port: u16,
    seeds: &[SocketAddr],
) -> Result<SocketAddr, Error> {
    if let Some(text) = &config.advertise_addr {
        return tokio::net::lookup_host(text.as_str())
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| Error::Start(format!("native.advertiseAddr: cannot resolve {text:?}")));
    }
    if !config.bind_addr.is_unspecified() {
        return Ok(SocketAddr::new(config.bind_addr, port));
    }
    if let Some(seed) = seeds.first() {
        let probe = UdpSocket::bind((IpAddr::from([0, 0, 0, 0]), 0)).await;
        if let Ok(probe) = probe
            && probe.connect(seed).await.is_ok()
            && let Ok(local) = probe.local_addr()
        {
            return Ok(SocketAddr::new(local.ip(), port));
        }
    }
    Ok(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port))
}

/// The Native carrier of one node.
pub struct NativeTransport {
    this: std::sync::Weak<NativeTransport>,
    pub(crate) id: NodeId,
    pub(crate) run: u64,
    pub(crate) advertise: SocketAddr,
    local: SocketAddr,
    pub(crate) config: NativeConfig,
    pub(crate) max_frame: usize,
    /// How often a connection with unconfirmed messages asks for confirmation…
    pub(crate) keepalive: Duration,
    /// …and after how long without any it is stalled.
    pub(crate) stall_after: Duration,
    /// How long a publish waits for room in one peer's queue.
    send_timeout: Duration,
    pub(crate) auth: AuthKey,
    pub(crate) tls: Tls,
    pub(crate) swim: Mutex<Swim>,
    pub(crate) codec: Mutex<GossipCodec>,
    pub(crate) udp: UdpSocket,
    pub(crate) inbound: InboundSender,
    reports: mpsc::UnboundedSender<Inbound>,
    peers: Mutex<HashMap<NodeId, Arc<peer::PeerLink>>>,
    /// The links of live members (a subset of `peers`), rebuilt when the
    /// membership changes, so that sending takes one read lock and nothing else.
    live: RwLock<Arc<HashMap<NodeId, Arc<peer::PeerLink>>>>,
    pub(crate) wake: Notify,
    pub(crate) faults: Option<Arc<Faults>>,
    pub(crate) handshakes: Arc<Semaphore>,
    /// Addresses with a state exchange in flight: a slow one is not doubled
    /// (under load, doubling them is what keeps the load up).
    syncing: Mutex<HashSet<SocketAddr>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
    /// Turns true on close: inbound connections end with it, so that peers
    /// notice at once and dial whoever runs this node id next.
    pub(crate) shutdown: tokio::sync::watch::Sender<bool>,
    /// A first state exchange succeeded.
    pub(crate) joined: tokio::sync::watch::Sender<bool>,
}

impl NativeTransport {
    /// The address TCP and UDP listen on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether the gossip here lists `id` as a live member.
    pub fn knows(&self, id: NodeId) -> bool {
        self.swim.lock().address(id).is_some()
    }

    /// Whether [`Transport::close`] has run.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// The address other nodes dial.
    pub fn advertise_addr(&self) -> SocketAddr {
        self.advertise
    }

    pub(crate) fn hello(&self) -> Hello {
        Hello::new(self.id, self.run, self.advertise)
    }

    /// Counts and reports something refused before it became a frame.
    pub(crate) fn refuse(&self, reason: DropReason, detail: String) {
        // The engine logs it with the other dropped frames.
        let _ = self.reports.send(Inbound::Refused { reason, detail });
    }

    /// Whether a simulated partition cuts `from` → `to`.
    pub(crate) fn cut(&self, from: NodeId, to: NodeId) -> bool {
        self.faults.as_ref().is_some_and(|f| f.blocks(from, to))
    }

    /// Reports a peer connection that stalled (`Some`) or its replacement (`None`).
    pub(crate) fn link_event(&self, down: Option<String>) {
        let item = match down {
            Some(detail) => Inbound::LinkDown(detail),
            None => Inbound::LinkUp,
        };
        let _ = self.reports.send(item);
    }

    /// Runs `f` on the gossip state, then its outputs. Member reports are
    /// handed to the engine, and the links of live members rebuilt, before
    /// the gossip's lock is released: whichever task runs the gossip, the
    /// engine learns its verdicts in the order they were made.
    pub(crate) fn with_swim<R>(self: &Arc<Self>, f: impl FnOnce(&mut Swim) -> R) -> R {
        let mut rest = Vec::new();
        let result = {
            let mut swim = self.swim.lock();
            let result = f(&mut swim);
            let mut membership_changed = false;
            for output in swim.drain_outputs() {
                match output {
                    Output::Report { id, run, state } => {
                        membership_changed = true;
                        if state == MemberState::Alive
                            && let Some(peer) = self.peers.lock().get(&id)
                        {
                            peer.revive();
                        }
                        let _ = self.reports.send(Inbound::Member {
                            id,
                            incarnation: run,
                            state,
                        });
                    }
                    other => rest.push(other),
                }
            }
            if membership_changed {
                let mut peers = self.peers.lock();
                let live = swim
                    .reachable()
                    .map(|(id, _)| {
                        let link = peers
                            .entry(id)
                            .or_insert_with(|| peer::PeerLink::start(self.clone(), id));
                        (id, link.clone())
                    })
                    .collect();
                *self.live.write() = Arc::new(live);
            }
            result
        };
        self.run_outputs(rest);
        self.wake.notify_one();
        result
    }

    /// Runs the gossip's network outputs (datagrams, probes over TCP, state
    /// exchanges); their order across tasks does not matter.
    fn run_outputs(self: &Arc<Self>, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Send { to, packet } => {
                    let datagram = self.codec.lock().seal(&packet);
                    // UDP: a full socket buffer loses the datagram, as the network could.
                    if let Err(error) = self.udp.try_send_to(&datagram, to) {
                        tracing::debug!(%to, %error, "gossip datagram not sent");
                    }
                }
                Output::StreamProbe {
                    target,
                    seq,
                    update,
                } => {
                    if self.cut(self.id, target) {
                        continue;
                    }
                    let link = self.live.read().get(&target).cloned();
                    if let Some(link) = link {
                        link.probe(seq, &update);
                    }
                }
                Output::Sync { addr } => {
                    if !self.syncing.lock().insert(addr) {
                        continue;
                    }
                    let me = self.clone();
                    tokio::spawn(async move { me.sync_with(addr).await });
                }
                Output::Report { .. } => unreachable!("reports are handled under the lock"),
            }
        }
    }

    /// Dials `addr` (TCP, TLS, handshake) within the connect timeout.
    pub(crate) async fn dial(
        &self,
        addr: SocketAddr,
    ) -> Result<(TlsStream<TcpStream>, Hello), String> {
        let attempt = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|error| format!("connect: {error}"))?;
            let _ = tcp.set_nodelay(true);
            let tls = self
                .tls
                .connector
                .connect(self.tls.server_name.clone(), tcp)
                .await
                .map_err(|error| format!("TLS: {error}"))?;
            let mut stream = TlsStream::Client(tls);
            let exporter = exporter(&stream)?;
            let peer = handshake::client(&mut stream, &self.auth, &exporter, &self.hello())
                .await
                .map_err(|error| format!("handshake: {error}"))?;
            Ok((stream, peer))
        };
        tokio::time::timeout(self.config.timeout, attempt)
            .await
            .map_err(|_| format!("no connection within {:?}", self.config.timeout))?
    }

    /// Exchanges full gossip states with whoever listens at `addr`.
    async fn sync_with(self: Arc<Self>, addr: SocketAddr) {
        let result = listener::sync_with(&self, addr).await;
        self.syncing.lock().remove(&addr);
        if let Err(error) = result {
            tracing::debug!(%addr, %error, "state exchange failed");
        }
    }

    fn check_open(&self) -> Result<(), TransportError> {
        if self.closed.load(Ordering::Relaxed) {
            Err(TransportError::Closed("Native"))
        } else {
            Ok(())
        }
    }
}

/// Frames that go ahead of queued bulk traffic.
fn is_control(kind: Option<Kind>) -> bool {
    matches!(
        kind,
        Some(Kind::Heartbeat | Kind::Join | Kind::Announce | Kind::Leave)
    )
}

/// The TLS session's keying material that handshake proofs are bound to.
pub(crate) fn exporter(stream: &TlsStream<TcpStream>) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    let result = match stream {
        TlsStream::Client(s) => {
            s.get_ref()
                .1
                .export_keying_material(&mut out, handshake::EXPORTER_LABEL, None)
        }
        TlsStream::Server(s) => {
            s.get_ref()
                .1
                .export_keying_material(&mut out, handshake::EXPORTER_LABEL, None)
        }
    };
    result.map_err(|error| format!("TLS exporter: {error}"))?;
    Ok(out)
}

#[async_trait]
impl Transport for NativeTransport {
    async fn publish(&self, frame: Bytes) -> Result<(), TransportError> {
        self.check_open()?;
        let kind = peek_kind(&frame);
        if kind == Some(Kind::Leave) {
            // This node is leaving: the gossip says so too.
            self.me().with_swim(|swim| swim.leave());
        }
        let control = is_control(kind);
        let live = self.live.read().clone();
        // Every peer gets the frame independently: one whose queue is full
        // (a slow or stalled connection) is waited for, together with the
        // others in the same case, at most `send_timeout`; one that cannot
        // take it loses it, and reports the gap when the next one arrives.
        let mut waiting = Vec::new();
        for (&id, link) in live.iter() {
            match link.offer(frame.clone(), control) {
                Ok(Offer::Taken) => {}
                Ok(Offer::Full(frame)) => waiting.push((id, link.clone(), frame)),
                // Stuck for a whole deadline already: not waited for again
                // until its queue drains (counted there).
                Ok(Offer::Overflowing) => {}
                Err(TransportError::Closed(carrier)) => {
                    return Err(TransportError::Closed(carrier));
                }
                Err(error) => tracing::debug!(peer = id, %error, "broadcast not queued for a peer"),
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        let deadline = self.send_timeout;
        let sends = waiting.into_iter().map(|(id, link, frame)| async move {
            match tokio::time::timeout(deadline, link.send(frame, control)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(peer = id, %error, "broadcast not queued for a peer")
                }
                Err(_) => link.overflowed(deadline),
            }
        });
        futures_util::future::join_all(sends).await;
        self.check_open()
    }

    async fn send_to(&self, node: NodeId, frame: Bytes) -> Result<(), TransportError> {
        self.check_open()?;
        let link = self.live.read().get(&node).cloned();
        let link = link.ok_or(TransportError::NoRoute(node))?;
        let control = is_control(peek_kind(&frame));
        match link.offer(frame, control)? {
            Offer::Taken => Ok(()),
            Offer::Overflowing => Err(TransportError::Stalled(self.send_timeout)),
            Offer::Full(frame) => {
                match tokio::time::timeout(self.send_timeout, link.send(frame, control)).await {
                    Ok(Err(TransportError::Stalled(_))) | Err(_) => {
                        link.overflowed(self.send_timeout);
                        Err(TransportError::Stalled(self.send_timeout))
                    }
                    Ok(result) => result,
                }
            }
        }
    }

    async fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        self.shutdown.send_replace(true);
        for (_, peer) in self.peers.lock().drain() {
            peer.stop();
        }
        tracing::info!(node = self.id, "native carrier closed");
    }

    fn reports_membership(&self) -> bool {
        true
    }

    /// Messages come only on TLS connections whose dialer proved the cluster
    /// key, bound to the session (the handshake), each from the node that
    /// connection speaks for (the listener refuses any other sender): TLS
    /// authenticates and encrypts each byte, so envelopes need no seal.
    fn authenticates_links(&self) -> bool {
        true
    }

    fn address_of(&self, node: NodeId) -> Option<String> {
        if node == self.id {
            return Some(self.advertise_addr().to_string());
        }
        self.swim
            .lock()
            .last_address(node)
            .map(|addr| addr.to_string())
    }
}

impl NativeTransport {
    /// An owning handle to this carrier (it always lives in an `Arc`).
    fn me(&self) -> Arc<Self> {
        self.this
            .upgrade()
            .expect("the carrier is alive while it is used")
    }
}
