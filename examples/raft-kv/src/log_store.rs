//! The store's Raft log, in memory. Clones share the same
//! log, so a test can stop a node's `Raft` and start a new one on the same
//! log, as a restarted process would find it on disk.

use crate::KvConfig;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

type Entry = EntryOf<KvConfig>;
type LogId = LogIdOf<KvConfig>;
type Vote = VoteOf<KvConfig>;

#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Log>>,
}

struct Log {
    last_purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
    committed: Option<LogId>,
    vote: Option<Vote>,
}

impl Default for LogStore {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Log {
                last_purged: None,
                entries: BTreeMap::new(),
                committed: None,
                vote: None,
            })),
        }
    }
}

impl LogStore {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        // A panic while holding it leaves a consistent map: take it anyway.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many entries are held (after purges).
    pub fn len(&self) -> usize {
        self.log().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RaftLogReader<KvConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self
            .log()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.log().vote)
    }
}

impl RaftLogStorage<KvConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<KvConfig>, io::Error> {
        let log = self.log();
        let last = log
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id())
            .or(log.last_purged);
        Ok(LogState {
            last_purged_log_id: log.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.log().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.log().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.log().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<KvConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        {
            let mut log = self.log();
            for entry in entries {
                log.entries.insert(entry.index(), entry);
            }
        }
        // In memory, it is durable as soon as it is there.
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let first_removed = last_log_id.map_or(0, |id| id.index + 1);
        self.log().entries.split_off(&first_removed);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut log = self.log();
        let kept = log.entries.split_off(&(log_id.index + 1));
        log.entries = kept;
        log.last_purged = Some(log_id);
        Ok(())
    }
}
