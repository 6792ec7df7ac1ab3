//! librdkafka clients destroyed on a thread of their own.
//!
//! Destroying a librdkafka client joins its threads, and librdkafka 2.x can
//! wait there forever: a partition reference leaked after a broker went down
//! and came back (confluentinc/librdkafka#4674, #4362) keeps a broker thread
//! alive. On a runtime worker that would stall every task of that worker; in
//! `spawn_blocking` it would stall the runtime's shutdown, which waits for
//! its blocking tasks (seen once in CI: the Kafka Raft test passed and its
//! process did not exit in 80 minutes; not reproduced in 40 runs since, so
//! the stuck close is inferred, the only unbounded blocking task the test
//! had). So the last
//! handle of a client hands it to a detached thread, and a close that has
//! not finished after [`CLOSE_WARNING`] is logged; nothing waits for it.

use std::ops::Deref;
use std::time::Duration;

/// How long a client may take to close before a warning says it is stuck.
pub const CLOSE_WARNING: Duration = Duration::from_secs(10);

/// A librdkafka client (`what` names it in logs) that is destroyed off the
/// calling thread when dropped.
pub struct Detached<T: Send + 'static> {
    client: Option<T>,
    what: &'static str,
}

impl<T: Send + 'static> Detached<T> {
    pub fn new(client: T, what: &'static str) -> Self {
        Self {
            client: Some(client),
            what,
        }
    }
}

impl<T: Send + 'static> Deref for Detached<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.client.as_ref().expect("present until dropped")
    }
}

impl<T: Send + 'static> Drop for Detached<T> {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        close(client, self.what);
    }
}

/// Destroys `client` on a new detached thread; with a tokio runtime at hand,
/// warns when that takes longer than [`CLOSE_WARNING`].
fn close<T: Send + 'static>(client: T, what: &'static str) {
    let closing = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || drop(client));
    let closing = match closing {
        Ok(closing) => closing,
        Err(error) => {
            // The client went with the closure: it closed on this thread.
            tracing::warn!(%error, what, "Kafka: no thread to close a client on");
            return;
        }
    };
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            tokio::time::sleep(CLOSE_WARNING).await;
            if !closing.is_finished() {
                tracing::warn!(
                    what,
                    "Kafka: a client has not closed after {CLOSE_WARNING:?} (librdkafka waits \
                     for a broker thread); it is left to its own thread"
                );
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Stands for a client whose destruction waits until told to finish,
    /// and says on which thread it ran.
    struct Stuck {
        finish: mpsc::Receiver<()>,
        ran_on: mpsc::Sender<Option<String>>,
    }

    impl Drop for Stuck {
        fn drop(&mut self) {
            let _ = self.finish.recv();
            let _ = self
                .ran_on
                .send(std::thread::current().name().map(str::to_string));
        }
    }

    #[test]
    fn a_client_that_never_closes_stalls_neither_its_task_nor_the_runtime_shutdown() {
        let (finish, finish_rx) = mpsc::channel();
        let (ran_on_tx, ran_on) = mpsc::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = Detached::new(
                Stuck {
                    finish: finish_rx,
                    ran_on: ran_on_tx,
                },
                "test client",
            );
            assert!(client.ran_on.send(None).is_ok(), "usable through Deref");
            drop(client);
        });
        // Neither the drop nor the shutdown waited for the stuck destruction.
        drop(runtime);
        assert_eq!(ran_on.recv().unwrap(), None, "the Deref check's message");
        assert!(ran_on.try_recv().is_err(), "destroyed before it was let go");
        finish.send(()).unwrap();
        let thread = ran_on
            .recv_timeout(Duration::from_secs(10))
            .expect("destroyed once let go");
        assert_eq!(thread.as_deref(), Some("kafka-close"));
    }
}
