//! The `Nats` carrier: core NATS publish/subscribe through async-nats.
//!
//! Subjects are prefixed by the cluster name, so clusters can share a server:
//! `{cluster}.broadcast` carries broadcasts and heartbeats to every node, and
//! `{cluster}.node.{id}` carries what is addressed to node `id`. A request is
//! published with the requester's own subject as its NATS reply subject, and
//! the reply comes back on it.
//!
//! The client reconnects by itself (truncated exponential backoff with
//! jitter) and re-subscribes; the engine reports `LinkDown`/`LinkUp` from
//! the client's events, and messages lost while the link was down as gaps.
//! Core NATS is at-most-once: what is published while a subscriber is away is
//! lost for it, and reported, never silent.

use async_nats::{ConnectOptions, Event, ServerAddr, Subject};
use async_trait::async_trait;
use bytes::Bytes;
use coordinator_core::config::{NatsConfig, Secret};
use coordinator_core::envelope::{Kind, peek_kind};
use coordinator_core::routes::{Routes, backoff};
use coordinator_core::transport::{Inbound, InboundSender, Link, Transport};
use coordinator_core::{Error, NodeId, Settings, TransportError};
use futures_util::StreamExt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The `@type` name of this carrier.
pub const NAME: &str = "Nats";

/// Whether this build can run the carrier.
pub const IMPLEMENTED: bool = true;

/// First and largest reconnect delay.
const RECONNECT_BASE: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Connects to the NATS servers of `config` and subscribes node
/// `settings.node_id`'s subjects.
pub async fn connect(config: &NatsConfig, settings: &Settings) -> Result<Link, Error> {
    let addresses = addresses(config)?;
    let (inbound, receiver) = coordinator_core::transport::inbound();
    let options = options(config, settings, inbound.clone()).await?;
    let client = tokio::time::timeout(
        config.timeout_connection + Duration::from_millis(100),
        options.connect(addresses),
    )
    .await
    .map_err(|_| connect_error(config, "timed out"))?
    .map_err(|error| connect_error(config, error))?;
    let subjects = Routes::new(&settings.cluster);
    let subscribe = |subject: String| {
        let client = client.clone();
        async move {
            client.subscribe(subject.clone()).await.map_err(|error| {
                Error::Start(format!("nats: cannot subscribe to {subject}: {error}"))
            })
        }
    };
    let broadcasts = subscribe(subjects.broadcast.clone()).await?;
    let direct = subscribe(subjects.node(settings.node_id)).await?;
    // A round trip to the server: once it answers, the subscriptions are in
    // force, so nothing published after `connect` returns is missed.
    client
        .flush()
        .await
        .map_err(|error| Error::Start(format!("nats: the server did not confirm: {error}")))?;
    let span = tracing::info_span!("nats", node = settings.node_id);
    let reader = tokio::spawn(tracing::Instrument::instrument(
        read(broadcasts, direct, inbound),
        span,
    ));
    tracing::info!(servers = ?config.addresses, broadcast = %subjects.broadcast, "nats carrier connected");
    Ok(Link {
        transport: Arc::new(NatsTransport {
            client,
            own_subject: Subject::from(subjects.node(settings.node_id)),
            broadcast_subject: Subject::from(subjects.broadcast.as_str()),
            subjects,
            publish_timeout: config.timeout_request,
            reader,
        }),
        inbound: receiver,
    })
}

fn connect_error(config: &NatsConfig, error: impl std::fmt::Display) -> Error {
    Error::Start(format!(
        "nats.addresses: cannot connect to {}: {error}",
        config.addresses.join(", ")
    ))
}

/// What [`connect`] would refuse before reaching a server: the addresses,
/// and the credentials (a `userCredentials` document that is not one).
pub fn check(config: &NatsConfig) -> Result<(), Error> {
    addresses(config)?;
    authenticate(ConnectOptions::new(), config).map(drop)
}

/// The credentials of `config` on `options`, as Stalwart applies them: a
/// user name with its secret, else a token (`credentials`, or `authToken`);
/// a user name without a secret is ignored (see `CoordinatorConfig::warnings`).
/// A `userCredentials` document is applied too.
pub fn authenticate(
    mut options: ConnectOptions,
    config: &NatsConfig,
) -> Result<ConnectOptions, Error> {
    let password = match &config.auth_username {
        Some(_) => secret(&config.auth_secret, "nats.authSecret")?,
        None => None,
    };
    if let (Some(user), Some(password)) = (&config.auth_username, password) {
        options = options.user_and_password(user.clone(), password);
    } else if let Some(token) = secret(&config.credentials, "nats.credentials")? {
        options = options.token(token);
    } else if let Some(token) = secret(&config.auth_token, "nats.authToken")? {
        options = options.token(token);
    }
    if let Some(document) = secret(&config.user_credentials, "nats.userCredentials")? {
        options = options.credentials(&document).map_err(|error| {
            Error::Start(format!(
                "nats.userCredentials: not a NATS user credentials (.creds) document: {error}"
            ))
        })?;
    }
    Ok(options)
}

fn addresses(config: &NatsConfig) -> Result<Vec<ServerAddr>, Error> {
    config
        .addresses
        .iter()
        .enumerate()
        .map(|(index, address)| {
            ServerAddr::from_str(address).map_err(|error| {
                Error::Start(format!(
                    "nats.addresses[{index}]: {address:?} is not a NATS address: {error}"
                ))
            })
        })
        .collect()
}

fn secret(secret: &Secret, field: &str) -> Result<Option<String>, Error> {
    secret
        .resolve(field)
        .map(|value| value.map(|value| value.expose().to_string()))
        .map_err(|error| Error::Start(error.to_string()))
}

async fn options(
    config: &NatsConfig,
    settings: &Settings,
    inbound: InboundSender,
) -> Result<ConnectOptions, Error> {
    let mut options = ConnectOptions::new()
        .name(format!(
            "coordinator {} node {}",
            settings.cluster, settings.node_id
        ))
        .connection_timeout(config.timeout_connection)
        .request_timeout(Some(config.timeout_request))
        .ping_interval(config.ping_interval)
        .client_capacity(config.capacity_client as usize)
        .read_buffer_capacity(config.capacity_read_buffer as u16)
        .subscription_capacity(config.capacity_subscription as usize)
        .max_reconnects(config.max_reconnects.map(|n| n as usize))
        .require_tls(config.use_tls)
        .tls_client_config(tls_config())
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let inbound = inbound.clone();
            async move { on_event(event, &inbound) }
        });
    if config.no_echo {
        options = options.no_echo();
    }
    authenticate(options, config)
}

/// The TLS configuration for a server that asks for TLS (or `useTls`): this
/// library's own, on ring and the system's authorities. async-nats would
/// otherwise make one with `ClientConfig::builder()`, which takes the process
/// default crypto provider, and panics in a process that links two and
/// installed neither.
fn tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_native_certs::load_native_certs().certs {
        // One unusable system certificate does not stop the others.
        let _ = roots.add(certificate);
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Truncated exponential backoff with jitter: 50 ms × 2ⁿ, at most 5 s.
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    backoff(attempts as u32, RECONNECT_BASE, RECONNECT_MAX)
}

fn on_event(event: Event, inbound: &InboundSender) {
    match event {
        Event::Disconnected => {
            inbound.deliver(Inbound::LinkDown(
                "NATS: disconnected from the server; reconnecting".into(),
            ));
        }
        Event::Connected => {
            inbound.deliver(Inbound::LinkUp);
        }
        Event::SlowConsumer(sid) => {
            tracing::warn!(
                sid,
                "NATS: this node reads too slowly; the server dropped messages"
            )
        }
        other => tracing::warn!(event = %other, "NATS"),
    }
}

/// Hands what arrives on this node's subjects to the engine.
async fn read(
    mut broadcasts: async_nats::Subscriber,
    mut direct: async_nats::Subscriber,
    inbound: InboundSender,
) {
    loop {
        let message = tokio::select! {
            message = broadcasts.next() => message,
            message = direct.next() => message,
        };
        let Some(message) = message else {
            tracing::debug!("NATS subscriptions ended");
            return;
        };
        if !inbound.deliver(Inbound::Frame(message.payload)) {
            return;
        }
    }
}

struct NatsTransport {
    client: async_nats::Client,
    subjects: Routes,
    /// Kept as NATS subjects: cloning one is a reference count, not a copy.
    broadcast_subject: Subject,
    own_subject: Subject,
    /// A publish that cannot even be queued in this long fails (the link is
    /// down and the client's buffer is full).
    publish_timeout: Duration,
    reader: JoinHandle<()>,
}

impl NatsTransport {
    async fn publish_to(&self, subject: Subject, frame: Bytes) -> Result<(), TransportError> {
        let request = peek_kind(&frame) == Some(Kind::Request);
        let publish = async {
            if request {
                self.client
                    .publish_with_reply(subject, self.own_subject.clone(), frame)
                    .await
            } else {
                self.client.publish(subject, frame).await
            }
        };
        match tokio::time::timeout(self.publish_timeout, publish).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(TransportError::LinkDown {
                carrier: NAME,
                detail: format!("publish failed: {error}"),
            }),
            Err(_) => Err(TransportError::LinkDown {
                carrier: NAME,
                detail: "the server is unreachable and the client's buffer is full".into(),
            }),
        }
    }
}

#[async_trait]
impl Transport for NatsTransport {
    async fn publish(&self, frame: Bytes) -> Result<(), TransportError> {
        self.publish_to(self.broadcast_subject.clone(), frame).await
    }

    async fn send_to(&self, node: NodeId, frame: Bytes) -> Result<(), TransportError> {
        self.publish_to(Subject::from(self.subjects.node(node)), frame)
            .await
    }

    async fn close(&self) {
        // Sends what is buffered (a departure, say) before closing.
        if let Err(error) = self.client.drain().await {
            tracing::debug!(%error, "NATS drain");
        }
        self.reader.abort();
    }
}
