//! TCP frames: `length u32 | type u8 | body`, big-endian; `length` counts the
//! type byte and the body. See `docs/PROTOCOL.md`.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Decoder;

/// Frame types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// Handshake: who is speaking, and a fresh nonce.
    Hello = 1,
    /// Handshake: proof of the cluster key, bound to this TLS session.
    Proof = 2,
    /// An engine envelope.
    Message = 3,
    /// A full gossip state; the receiver answers with its own.
    SyncRequest = 4,
    /// The answer to a `SyncRequest`.
    SyncReply = 5,
    /// Keep-alive on a dialed connection: "how many messages have you read?"
    Ping = 6,
    /// The answer to a `Ping`: messages read on this connection, u64.
    Pong = 7,
    /// A gossip probe over TCP: `seq u32 | update` (the prober's news of the receiver).
    Probe = 8,
    /// The answer to a `Probe`: `seq u32 | update` (the receiver's own state).
    ProbeAck = 9,
}

impl FrameType {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => FrameType::Hello,
            2 => FrameType::Proof,
            3 => FrameType::Message,
            4 => FrameType::SyncRequest,
            5 => FrameType::SyncReply,
            6 => FrameType::Ping,
            7 => FrameType::Pong,
            8 => FrameType::Probe,
            9 => FrameType::ProbeAck,
            _ => return None,
        })
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{kind:?} frame of {size} bytes is over its limit of {max}")]
    TooLarge {
        kind: FrameType,
        size: usize,
        max: usize,
    },
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("empty frame")]
    Empty,
}

/// Reads one frame whose body is at most `max` bytes.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<(FrameType, Bytes), FrameError> {
    read_frame_limited(reader, |_| max).await
}

/// Memory a body takes before its bytes arrive: a frame that announces more
/// grows as they come, so that what a peer announces is never reserved
/// before it is sent.
const BODY_STEP: usize = 64 * 1024;

/// Reads one frame whose body is at most `limit(type)` bytes: the limit of
/// the frame's type is checked before its body is read.
pub async fn read_frame_limited<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: impl Fn(FrameType) -> usize,
) -> Result<(FrameType, Bytes), FrameError> {
    let length = reader.read_u32().await? as usize;
    if length == 0 {
        return Err(FrameError::Empty);
    }
    let kind = reader.read_u8().await?;
    let kind = FrameType::from_byte(kind).ok_or(FrameError::UnknownType(kind))?;
    let size = length - 1;
    let max = limit(kind);
    if size > max {
        return Err(FrameError::TooLarge { kind, size, max });
    }
    let mut body = BytesMut::with_capacity(size.min(BODY_STEP));
    let mut rest = (&mut *reader).take(size as u64);
    while body.len() < size {
        body.reserve((size - body.len()).min(BODY_STEP));
        if rest.read_buf(&mut body).await? == 0 {
            return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    Ok((kind, body.freeze()))
}

/// Frames read out of one buffer that large reads fill (tokio-util's
/// `FramedRead`): a body is a slice of that buffer, not a copy of it. Each
/// type's limit is checked on the header, before the body is read, and the
/// buffer grows for a large body only as its bytes arrive. A body keeps the
/// allocation it was read into alive while it lives (one read buffer, 64
/// KiB, or the frame itself if larger).
pub struct FrameDecoder<L> {
    limit: L,
}

impl<L: Fn(FrameType) -> usize> FrameDecoder<L> {
    /// Frames whose bodies are at most `limit(type)` bytes.
    pub fn new(limit: L) -> Self {
        Self { limit }
    }
}

impl<L: Fn(FrameType) -> usize> Decoder for FrameDecoder<L> {
    type Item = (FrameType, Bytes);
    type Error = FrameError;

    fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        if buffer.len() < HEADER {
            return Ok(None);
        }
        let length = u32::from_be_bytes(buffer[..4].try_into().expect("four bytes")) as usize;
        if length == 0 {
            return Err(FrameError::Empty);
        }
        let kind = FrameType::from_byte(buffer[4]).ok_or(FrameError::UnknownType(buffer[4]))?;
        let size = length - 1;
        let max = (self.limit)(kind);
        if size > max {
            return Err(FrameError::TooLarge { kind, size, max });
        }
        let missing = (HEADER + size).saturating_sub(buffer.len());
        if missing > 0 {
            buffer.reserve(missing.min(BODY_STEP));
            return Ok(None);
        }
        buffer.advance(HEADER);
        Ok(Some((kind, buffer.split_to(size).freeze())))
    }
}

/// Frame header: length and type.
const HEADER: usize = 5;

/// Writes one frame (not flushed).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    kind: FrameType,
    body: &[u8],
) -> std::io::Result<()> {
    writer.write_all(&header(kind, body.len())).await?;
    writer.write_all(body).await
}

/// A frame's header: `length u32 | type u8`.
fn header(kind: FrameType, body_len: usize) -> [u8; 5] {
    let mut header = [0u8; 5];
    header[..4].copy_from_slice(&((body_len + 1) as u32).to_be_bytes());
    header[4] = kind as u8;
    header
}

/// Writes a frame's header and body in vectored writes: a writer that
/// gathers (a TLS stream does, into the record it encrypts) takes the body
/// from where it is, with no copy of it into a buffer first.
pub async fn write_frame_vectored<W: AsyncWrite + Unpin>(
    writer: &mut W,
    kind: FrameType,
    body: &[u8],
) -> std::io::Result<()> {
    let header = header(kind, body.len());
    let mut slices = [std::io::IoSlice::new(&header), std::io::IoSlice::new(body)];
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let written = writer.write_vectored(slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio_util::codec::FramedRead;

    /// A reader that hands out `chunk` bytes at a time.
    struct Chunks<'a> {
        bytes: &'a [u8],
        chunk: usize,
    }

    impl tokio::io::AsyncRead for Chunks<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self.chunk.min(self.bytes.len()).min(buf.remaining());
            buf.put_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn the_decoder_reads_what_read_frame_reads_however_the_bytes_arrive() {
        let mut wire = Vec::new();
        let bodies: Vec<Vec<u8>> = (0..40u32)
            .map(|n| (0..(n * 997 % 70_000)).map(|i| (i ^ n) as u8).collect())
            .collect();
        for (n, body) in bodies.iter().enumerate() {
            let kind = if n % 3 == 0 {
                FrameType::Ping
            } else {
                FrameType::Message
            };
            write_frame(&mut wire, kind, body).await.unwrap();
        }
        let limit = |_: FrameType| 70_000;
        let mut expected = Vec::new();
        let mut reader = &wire[..];
        while let Ok(frame) = read_frame_limited(&mut reader, limit).await {
            expected.push(frame);
        }
        assert_eq!(expected.len(), bodies.len());
        for chunk in [1, 7, 4096, 1 << 20] {
            let frames = FramedRead::new(
                Chunks {
                    bytes: &wire,
                    chunk,
                },
                FrameDecoder::new(limit),
            );
            let read: Vec<_> = frames.map(Result::unwrap).collect().await;
            assert_eq!(read, expected, "{chunk}-byte reads");
        }
    }

    /// A writer that takes at most `chunk` bytes per write, of one slice.
    struct Trickle {
        bytes: Vec<u8>,
        chunk: usize,
    }

    impl tokio::io::AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = self.chunk.min(buf.len());
            self.bytes.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_frame_written_in_vectored_writes_is_the_frame_however_few_bytes_each_takes() {
        let bodies: Vec<Vec<u8>> = (0..12u32)
            .map(|n| (0..n * 997).map(|i| (i * 31 + n) as u8).collect())
            .collect();
        let mut expected = Vec::new();
        for body in &bodies {
            write_frame(&mut expected, FrameType::Message, body)
                .await
                .unwrap();
        }
        for chunk in [1, 3, 5, 6, 4096, 1 << 20] {
            let mut wire = Trickle {
                bytes: Vec::new(),
                chunk,
            };
            for (n, body) in bodies.iter().enumerate() {
                // Vectored and plain writes mixed, as a peer link mixes them.
                if n % 2 == 0 {
                    write_frame_vectored(&mut wire, FrameType::Message, body)
                        .await
                        .unwrap();
                } else {
                    write_frame(&mut wire, FrameType::Message, body)
                        .await
                        .unwrap();
                }
            }
            assert!(wire.bytes == expected, "{chunk}-byte writes");
        }
        let mut stuck = Trickle {
            bytes: Vec::new(),
            chunk: 0,
        };
        assert_eq!(
            write_frame_vectored(&mut stuck, FrameType::Message, b"body")
                .await
                .unwrap_err()
                .kind(),
            std::io::ErrorKind::WriteZero
        );
    }

    #[tokio::test]
    async fn the_decoder_refuses_on_the_header_before_the_body_arrives() {
        // Only the header of a frame that announces 1 GiB.
        let mut header = ((1u32 << 30) + 1).to_be_bytes().to_vec();
        header.push(FrameType::Message as u8);
        let mut frames = FramedRead::new(&header[..], FrameDecoder::new(|_| 1024));
        assert!(matches!(
            frames.next().await,
            Some(Err(FrameError::TooLarge {
                kind: FrameType::Message,
                max: 1024,
                ..
            }))
        ));
        let mut frames = FramedRead::new(&[0u8, 0, 0, 1, 99][..], FrameDecoder::new(|_| 10));
        assert!(matches!(
            frames.next().await,
            Some(Err(FrameError::UnknownType(99)))
        ));
        let mut frames = FramedRead::new(&[0u8, 0, 0, 0, 3][..], FrameDecoder::new(|_| 10));
        assert!(matches!(frames.next().await, Some(Err(FrameError::Empty))));
        // A frame announced within its limit but cut short is an error, not a frame.
        let mut cut = 11u32.to_be_bytes().to_vec();
        cut.extend([FrameType::Message as u8, 1, 2, 3]);
        let mut frames = FramedRead::new(&cut[..], FrameDecoder::new(|_| 10));
        assert!(matches!(frames.next().await, Some(Err(FrameError::Io(_)))));
    }

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused_before_reading_them() {
        let mut buffer = Vec::new();
        write_frame(&mut buffer, FrameType::Message, b"hello")
            .await
            .unwrap();
        write_frame(&mut buffer, FrameType::SyncReply, &[0; 100])
            .await
            .unwrap();
        let mut reader = &buffer[..];
        let (kind, body) = read_frame(&mut reader, 100).await.unwrap();
        assert_eq!((kind, &body[..]), (FrameType::Message, &b"hello"[..]));
        let mut reader_small = &buffer[10..];
        assert!(matches!(
            read_frame(&mut reader_small, 99).await,
            Err(FrameError::TooLarge {
                kind: FrameType::SyncReply,
                size: 100,
                max: 99
            })
        ));
        let mut unknown = &[0, 0, 0, 1, 99][..];
        assert!(matches!(
            read_frame(&mut unknown, 10).await,
            Err(FrameError::UnknownType(99))
        ));
    }
}
