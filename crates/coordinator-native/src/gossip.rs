//! The UDP side of the port: receives, authenticates and de-duplicates gossip
//! datagrams, and runs the protocol's timers.

use crate::swim::{DecodeError, MAX_DATAGRAM};
use crate::transport::NativeTransport;
use coordinator_core::DropReason;
use std::sync::Arc;
use std::time::Instant;

pub(crate) async fn receive_loop(transport: Arc<NativeTransport>) {
    let mut buffer = vec![0u8; 65_536];
    loop {
        let (len, from) = match transport.udp.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(error) => {
                // ICMP errors surface here on some systems; the socket is still good.
                tracing::debug!(%error, "gossip receive failed");
                continue;
            }
        };
        if len > MAX_DATAGRAM {
            transport.refuse(
                DropReason::TooLarge,
                format!("gossip datagram of {len} bytes from {from} (limit {MAX_DATAGRAM})"),
            );
            continue;
        }
        let opened = transport.codec.lock().open(&buffer[..len]);
        let packet = match opened {
            Ok(packet) => packet,
            Err(error) => {
                let reason = match error {
                    DecodeError::Unauthenticated => DropReason::Unauthenticated,
                    DecodeError::Replayed { .. } => DropReason::Duplicate,
                    _ => DropReason::Malformed,
                };
                transport.refuse(reason, format!("gossip datagram from {from}: {error}"));
                continue;
            }
        };
        if transport.cut(packet.from, transport.id) {
            continue;
        }
        transport.with_swim(|swim| swim.handle_packet(Instant::now(), from, packet));
    }
}

pub(crate) async fn timer_loop(transport: Arc<NativeTransport>) {
    loop {
        let deadline = {
            let swim = transport.swim.lock();
            if swim.has_left() {
                // Nothing is timed after a departure (and the deadlines stop moving).
                return;
            }
            swim.next_deadline()
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = transport.wake.notified() => {}
        }
        let now = Instant::now();
        if transport.swim.lock().next_deadline() <= now {
            transport.with_swim(|swim| swim.tick(now));
        }
    }
}
