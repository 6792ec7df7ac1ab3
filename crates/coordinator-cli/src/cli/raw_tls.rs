//! The practical limit for the Native carrier: a bare tokio-rustls connection
//! over loopback with the carrier's own TLS settings (TLS 1.3, ring,
//! self-signed certificate), carrying `len u32 | bytes` frames and nothing else.

use anyhow::Context;
use coordinator::config::NativeConfig;
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

/// The same write batch as a Native peer connection.
const BUFFER: usize = 64 * 1024;

type Client = tokio_rustls::client::TlsStream<TcpStream>;
type Server = tokio_rustls::server::TlsStream<TcpStream>;

async fn connected_pair() -> anyhow::Result<(Client, Server)> {
    let tls = coordinator_native::tls::build(&NativeConfig::default())?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let accept = async {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        tls.acceptor.accept(socket).await
    };
    let dial = async {
        let socket = TcpStream::connect(address).await?;
        socket.set_nodelay(true)?;
        tls.connector.connect(tls.server_name.clone(), socket).await
    };
    let (client, server) = tokio::try_join!(dial, accept).context("raw TLS connection")?;
    Ok((client, server))
}

async fn read_frame(
    reader: &mut (impl AsyncRead + Unpin),
    buffer: &mut Vec<u8>,
) -> std::io::Result<()> {
    let length = reader.read_u32().await? as usize;
    buffer.resize(length, 0);
    reader.read_exact(buffer).await?;
    Ok(())
}

async fn write_frame(writer: &mut (impl AsyncWrite + Unpin), body: &[u8]) -> std::io::Result<()> {
    writer.write_u32(body.len() as u32).await?;
    writer.write_all(body).await
}

/// Round trips of one frame through an echo server.
pub async fn round_trips(
    samples: u64,
    size: usize,
    histogram: &mut Histogram<u64>,
) -> anyhow::Result<()> {
    let (client, server) = connected_pair().await?;
    let echo = tokio::spawn(async move {
        let (reader, writer) = tokio::io::split(server);
        let (mut reader, mut writer) = (
            BufReader::with_capacity(BUFFER, reader),
            BufWriter::with_capacity(BUFFER, writer),
        );
        let mut buffer = Vec::new();
        while read_frame(&mut reader, &mut buffer).await.is_ok() {
            if write_frame(&mut writer, &buffer).await.is_err() || writer.flush().await.is_err() {
                break;
            }
        }
    });
    let (reader, writer) = tokio::io::split(client);
    let (mut reader, mut writer) = (
        BufReader::with_capacity(BUFFER, reader),
        BufWriter::with_capacity(BUFFER, writer),
    );
    let body = vec![0x5a; size];
    let mut buffer = Vec::new();
    let timed = super::bench::time_each(samples, histogram, async || {
        write_frame(&mut writer, &body).await?;
        writer.flush().await?;
        read_frame(&mut reader, &mut buffer).await?;
        Ok(())
    })
    .await;
    echo.abort();
    timed?;
    Ok(())
}

/// Frames written back to back and counted by the reader; returns how many
/// arrived and the time until the last one did.
pub async fn one_way(count: u64, size: usize, limit: Duration) -> anyhow::Result<(u64, Duration)> {
    let (client, server) = connected_pair().await?;
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut writer = BufWriter::with_capacity(BUFFER, client);
        let body = vec![0x5a; size];
        for _ in 0..count {
            write_frame(&mut writer, &body).await?;
        }
        writer.flush().await?;
        anyhow::Ok(writer)
    });
    let mut reader = BufReader::with_capacity(BUFFER, server);
    let mut buffer = Vec::new();
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + limit;
    while received < count {
        match tokio::time::timeout_at(deadline, read_frame(&mut reader, &mut buffer)).await {
            Ok(Ok(())) => received += 1,
            Ok(Err(error)) => return Err(error).context("raw TLS reader"),
            Err(_) => break,
        }
    }
    let elapsed = started.elapsed();
    // Keep the client open until everything was read, then close it.
    drop(writer.await??);
    Ok((received, elapsed))
}
