//! Frame buffers given back when the last reference to their frame is
//! dropped, so that a stream of large frames reuses memory the process
//! already touched. A fresh 60 KiB buffer for every batch cost the sending
//! side a page fault per 4 KiB written (the allocator hands freed memory
//! back to the kernel between batches): most of the page faults of a
//! 16 KiB broadcast stream, measured in BENCHMARKS.md.

use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::{Arc, Weak};

/// Bytes of buffers kept at most while none is taken: what a burst of
/// large broadcasts has in flight on a link (unconfirmed frames are held
/// until the peer confirms them, every 1 MiB written on Native), so that the
/// next burst finds them again.
const KEPT_BYTES: usize = 4 * 1024 * 1024;

/// The buffers of one node's frames: all of one size, `buffer_bytes`,
/// which is what a full batch needs with its seal.
#[derive(Clone, Debug)]
pub struct FramePool {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    buffer_bytes: usize,
}

/// A frame in a buffer of the pool; gives it back when dropped.
struct Pooled {
    buffer: Vec<u8>,
    pool: Weak<Mutex<Vec<Vec<u8>>>>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        let mut free = pool.lock();
        if (free.len() + 1) * buffer.capacity() <= KEPT_BYTES {
            free.push(buffer);
        }
    }
}

impl FramePool {
    pub fn new(buffer_bytes: usize) -> Self {
        Self {
            free: Arc::default(),
            buffer_bytes,
        }
    }

    /// Whether a frame of `capacity` bytes takes a buffer of the pool: one
    /// that fits and would not leave most of it unused.
    fn serves(&self, capacity: usize) -> bool {
        capacity <= self.buffer_bytes && capacity * 2 > self.buffer_bytes
    }

    /// An empty buffer with room for `capacity` bytes.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        if !self.serves(capacity) {
            return Vec::with_capacity(capacity);
        }
        self.free
            .lock()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.buffer_bytes))
    }

    /// The frame in `buffer`, which goes back to the pool once every
    /// reference to the frame is dropped if it came from it.
    pub fn freeze(&self, buffer: Vec<u8>) -> Bytes {
        if buffer.capacity() != self.buffer_bytes {
            return Bytes::from(buffer);
        }
        Bytes::from_owner(Pooled {
            buffer,
            pool: Arc::downgrade(&self.free),
        })
    }

    /// Buffers waiting to be taken.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.free.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_when_its_last_frame_is_dropped_and_is_taken_again() {
        let pool = FramePool::new(1024);
        let mut buffer = pool.take(1000);
        buffer.extend_from_slice(b"frame");
        let address = buffer.as_ptr();
        let frame = pool.freeze(buffer);
        let slice = frame.slice(1..3);
        drop(frame);
        assert_eq!(pool.idle(), 0, "a slice still holds it");
        assert_eq!(&slice[..], b"ra");
        drop(slice);
        assert_eq!(pool.idle(), 1);
        let again = pool.take(900);
        assert_eq!(again.as_ptr(), address, "the same memory, reused");
        assert!(again.is_empty());
    }

    #[test]
    fn small_and_oversized_frames_do_not_use_the_pool_and_what_is_kept_is_bounded() {
        let pool = FramePool::new(1024);
        drop(pool.freeze(pool.take(100)));
        drop(pool.freeze(pool.take(4096)));
        assert_eq!(pool.idle(), 0);
        let kept = KEPT_BYTES / 1024;
        let frames: Vec<_> = (0..kept + 5)
            .map(|_| pool.freeze(pool.take(1024)))
            .collect();
        drop(frames);
        assert_eq!(pool.idle(), kept);
    }
}
