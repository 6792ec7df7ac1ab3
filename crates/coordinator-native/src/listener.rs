//! The TCP side of the port: accepts connections, refuses any that do not
//! finish TLS and the cluster-key handshake in time, then reads frames; and
//! full state exchanges, both ends.

use crate::frame::{FrameDecoder, FrameError, FrameType, read_frame, write_frame};
use crate::handshake::{self, HandshakeError};
use crate::swim::{decode_probe, decode_state, encode_probe, encode_state};
use crate::transport::{NativeTransport, exporter};
use coordinator_core::DropReason;
use coordinator_core::envelope::peek_sender;
use coordinator_core::transport::Inbound;
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsStream;
use tokio_util::codec::FramedRead;

/// Largest full-state frame (about 25,000 members).
const MAX_STATE_FRAME: usize = 1024 * 1024;
/// The largest body of any other frame a listener reads (pings, probes; a
/// frame of a type it does not expect is refused once read).
const MAX_CONTROL_FRAME: usize = 1024;
/// Read buffer of an inbound connection.
const READ_BUFFER: usize = 64 * 1024;

pub(crate) async fn accept_loop(transport: Arc<NativeTransport>, listener: TcpListener) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = transport.handshakes.clone().try_acquire_owned() else {
            transport.refuse(
                DropReason::Unauthenticated,
                format!("connection from {remote} refused: too many handshakes in progress"),
            );
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve(transport.clone(), tcp, remote, permit));
    }
}

/// Why an accepted connection was refused, for the counters.
fn refusal(error: &AcceptError) -> DropReason {
    match error {
        AcceptError::Handshake(error) if error.is_wrong_key() => DropReason::Unauthenticated,
        AcceptError::Handshake(HandshakeError::Frame(FrameError::TooLarge { .. })) => {
            DropReason::TooLarge
        }
        AcceptError::Tls(_) => DropReason::Unauthenticated,
        _ => DropReason::Malformed,
    }
}

#[derive(Debug, thiserror::Error)]
enum AcceptError {
    #[error("no TLS: {0}")]
    Tls(std::io::Error),
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("no handshake within {0:?}")]
    Timeout(std::time::Duration),
    #[error("{0}")]
    Other(String),
}

async fn accept(
    transport: &NativeTransport,
    tcp: TcpStream,
) -> Result<(TlsStream<TcpStream>, handshake::Hello), AcceptError> {
    let attempt = async {
        let tls = transport
            .tls
            .acceptor
            .accept(tcp)
            .await
            .map_err(AcceptError::Tls)?;
        let mut stream = TlsStream::Server(tls);
        let exporter = exporter(&stream).map_err(AcceptError::Other)?;
        let peer =
            handshake::server(&mut stream, &transport.auth, &exporter, &transport.hello()).await?;
        Ok((stream, peer))
    };
    tokio::time::timeout(transport.config.timeout, attempt)
        .await
        .map_err(|_| AcceptError::Timeout(transport.config.timeout))?
}

async fn serve(
    transport: Arc<NativeTransport>,
    tcp: TcpStream,
    remote: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let (stream, peer) = match accept(&transport, tcp).await {
        Ok(accepted) => accepted,
        Err(error) => {
            transport.refuse(
                refusal(&error),
                format!("connection from {remote} refused: {error}"),
            );
            return;
        }
    };
    drop(permit);
    let mut shutdown = transport.shutdown.subscribe();
    if *shutdown.borrow_and_update() {
        return;
    }
    if peer.id != transport.id {
        transport.with_swim(|swim| swim.contact(Instant::now(), peer.id, peer.run, peer.addr));
    }
    let idle = transport.config.inactivity_timeout;
    // Each type's limit is checked before its body is read.
    let max_message = transport.max_frame;
    let limit = |kind: FrameType| match kind {
        FrameType::Message => max_message,
        FrameType::SyncRequest => MAX_STATE_FRAME,
        _ => MAX_CONTROL_FRAME,
    };
    // Frames are read out of one buffer filled by large reads, and a body is
    // a slice of it (writes go to the stream itself).
    let mut frames = FramedRead::with_capacity(stream, FrameDecoder::new(limit), READ_BUFFER);
    // Messages read on this connection, for the dialer's keep-alives.
    let mut received: u64 = 0;
    loop {
        let next = async {
            frames
                .next()
                .await
                .unwrap_or_else(|| Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into())))
        };
        let read = tokio::time::timeout(idle, next);
        let read = tokio::select! {
            read = read => read,
            _ = shutdown.changed() => {
                tracing::debug!(peer = peer.id, "carrier closed: connection closed");
                return;
            }
        };
        let frame = match read {
            Err(_) => {
                tracing::debug!(peer = peer.id, "idle connection closed");
                return;
            }
            Ok(Ok(frame)) => frame,
            Ok(Err(FrameError::Io(error))) => {
                tracing::debug!(peer = peer.id, %error, "connection closed");
                if peer.id != transport.id {
                    transport.with_swim(|swim| swim.connection_lost(Instant::now(), peer.id));
                }
                return;
            }
            Ok(Err(error)) => {
                let reason = match error {
                    FrameError::TooLarge { .. } => DropReason::TooLarge,
                    _ => DropReason::Malformed,
                };
                transport.refuse(
                    reason,
                    format!(
                        "connection from node {} ({remote}) closed: {error}",
                        peer.id
                    ),
                );
                return;
            }
        };
        match frame {
            (FrameType::Message, body) => {
                received += 1;
                // The envelope is not sealed (the link authenticates it), so
                // the connection says who sent it: another node's name in it
                // is refused. What is not an envelope the engine refuses.
                if let Some(sender) = peek_sender(&body)
                    && sender != peer.id
                {
                    transport.refuse(
                        DropReason::Unauthenticated,
                        format!(
                            "a message claiming to be from node {sender} on the connection of node {} ({remote})",
                            peer.id
                        ),
                    );
                    continue;
                }
                if !transport.inbound.deliver(Inbound::Frame(body)) {
                    return;
                }
            }
            (FrameType::Ping, _) => {
                if write_frame(frames.get_mut(), FrameType::Pong, &received.to_be_bytes())
                    .await
                    .is_err()
                    || frames.get_mut().flush().await.is_err()
                {
                    return;
                }
            }
            (FrameType::Probe, body) => {
                if transport.cut(peer.id, transport.id) {
                    continue;
                }
                let Ok((seq, update)) = decode_probe(&body) else {
                    transport.refuse(
                        DropReason::Malformed,
                        format!("unreadable gossip probe from node {}", peer.id),
                    );
                    return;
                };
                let answer = transport.with_swim(|swim| {
                    swim.stream_probe(Instant::now(), peer.id, peer.run, peer.addr, update)
                });
                if transport.cut(transport.id, peer.id) {
                    continue;
                }
                if write_frame(
                    frames.get_mut(),
                    FrameType::ProbeAck,
                    &encode_probe(seq, &answer),
                )
                .await
                .is_err()
                    || frames.get_mut().flush().await.is_err()
                {
                    return;
                }
            }
            (FrameType::SyncRequest, body) => {
                if transport.cut(peer.id, transport.id) {
                    return;
                }
                let Ok(updates) = decode_state(&body) else {
                    transport.refuse(
                        DropReason::Malformed,
                        format!("unreadable gossip state from node {}", peer.id),
                    );
                    return;
                };
                let reply = transport.with_swim(|swim| {
                    swim.merge_state(Instant::now(), updates);
                    encode_state(&swim.full_state())
                });
                if write_frame(frames.get_mut(), FrameType::SyncReply, &reply)
                    .await
                    .is_err()
                    || frames.get_mut().flush().await.is_err()
                {
                    return;
                }
            }
            (kind, _) => {
                transport.refuse(
                    DropReason::Malformed,
                    format!("unexpected {kind:?} frame from node {}", peer.id),
                );
                return;
            }
        }
    }
}

/// Sends this node's full state to `addr` and merges the answer.
pub(crate) async fn sync_with(
    transport: &Arc<NativeTransport>,
    addr: SocketAddr,
) -> Result<(), String> {
    let (mut stream, peer) = transport.dial(addr).await?;
    if peer.id == transport.id
        || transport.cut(transport.id, peer.id)
        || transport.cut(peer.id, transport.id)
    {
        return Ok(());
    }
    let state = encode_state(&transport.swim.lock().full_state());
    let exchange = async {
        write_frame(&mut stream, FrameType::SyncRequest, &state)
            .await
            .map_err(|error| error.to_string())?;
        stream.flush().await.map_err(|error| error.to_string())?;
        match read_frame(&mut stream, MAX_STATE_FRAME).await {
            Ok((FrameType::SyncReply, body)) => {
                decode_state(&body).map_err(|error| error.to_string())
            }
            Ok((kind, _)) => Err(format!("expected a state, got a {kind:?} frame")),
            Err(error) => Err(error.to_string()),
        }
    };
    let updates = tokio::time::timeout(transport.config.timeout * 2, exchange)
        .await
        .map_err(|_| "no state in time".to_string())??;
    let _ = stream.shutdown().await;
    transport.with_swim(|swim| {
        swim.contact(Instant::now(), peer.id, peer.run, peer.addr);
        swim.merge_state(Instant::now(), updates);
    });
    transport.joined.send_replace(true);
    Ok(())
}
