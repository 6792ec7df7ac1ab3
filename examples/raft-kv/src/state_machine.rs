//! The replicated key-value map, with a fingerprint of everything applied so
//! that nodes can prove they applied the same commands in the same order.

use crate::{Applied, Command, KvConfig};
use openraft::storage::RaftStateMachine;
use openraft::{
    EmptyNode, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What a node has applied: the last log index, how many commands, and a
/// hash chain over (index, command) in application order. Two nodes with
/// equal fingerprints applied the same commands at the same indexes in the
/// same order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub last_index: u64,
    pub commands: u64,
    pub chain: [u8; 32],
}

impl Fingerprint {
    fn add(&mut self, index: u64, command: &Command) {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.chain);
        hasher.update(&index.to_le_bytes());
        postcard::to_io(command, &mut hasher).expect("a command encodes");
        self.chain = *hasher.finalize().as_bytes();
        self.commands += 1;
    }
}

/// The state machine; clones share it (as a restarted process would find it
/// on disk).
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<State>>,
    /// The fingerprint after each batch applied or snapshot installed.
    applied: Arc<watch::Sender<Fingerprint>>,
}

impl Default for StateMachine {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            applied: Arc::new(watch::Sender::new(Fingerprint::default())),
        }
    }
}

#[derive(Default)]
struct State {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, EmptyNode>,
    body: Body,
    /// The last snapshot built or installed.
    snapshot: Option<(SnapshotMeta<u64, EmptyNode>, Vec<u8>)>,
    snapshots_built: u64,
    snapshots_installed: u64,
}

/// What a snapshot holds besides its metadata.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Body {
    data: BTreeMap<String, String>,
    fingerprint: Fingerprint,
}

impl StateMachine {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.state().body.data.get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.state().body.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.state().body.fingerprint
    }

    /// Waits until at least `commands` commands have been applied; what was
    /// applied then.
    pub async fn applied_at_least(&self, commands: u64) -> Fingerprint {
        let mut applied = self.applied.subscribe();
        let reached = applied
            .wait_for(|print| print.commands >= commands)
            .await
            .expect("the sender lives as long as this state machine");
        *reached
    }

    /// How many snapshots from a leader this state machine installed.
    pub fn snapshots_installed(&self) -> u64 {
        self.state().snapshots_installed
    }
}

fn apply_command(body: &mut Body, index: u64, command: Command) -> Applied {
    body.fingerprint.add(index, &command);
    body.fingerprint.last_index = index;
    let previous = match command {
        Command::Set { key, value } => body.data.insert(key, value),
        Command::Delete { key } => body.data.remove(&key),
    };
    Applied { previous }
}

impl RaftStateMachine<KvConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, EmptyNode>), StorageError<u64>> {
        let state = self.state();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<u64>>
    where
        I: IntoIterator<Item = openraft::Entry<KvConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut state = self.state();
        let mut results = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => results.push(Applied::default()),
                EntryPayload::Normal(command) => {
                    results.push(apply_command(&mut state.body, entry.log_id.index, command))
                }
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    results.push(Applied::default());
                }
            }
        }
        self.applied.send_replace(state.body.fingerprint);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, EmptyNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let bytes = snapshot.into_inner();
        let body: Body = postcard::from_bytes(&bytes)
            .map_err(|error| StorageIOError::read_snapshot(Some(meta.signature()), &error))?;
        let mut state = self.state();
        state.body = body;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.snapshot = Some((meta.clone(), bytes));
        state.snapshots_installed += 1;
        self.applied.send_replace(state.body.fingerprint);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<KvConfig>>, StorageError<u64>> {
        Ok(self
            .state()
            .snapshot
            .as_ref()
            .map(|(meta, bytes)| Snapshot {
                meta: meta.clone(),
                snapshot: Box::new(Cursor::new(bytes.clone())),
            }))
    }
}

impl RaftSnapshotBuilder<KvConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<KvConfig>, StorageError<u64>> {
        let mut state = self.state();
        let bytes = postcard::to_stdvec(&state.body)
            .map_err(|error| StorageIOError::write_snapshot(None, &error))?;
        state.snapshots_built += 1;
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                state.last_applied.map_or(0, |id| id.index),
                state.snapshots_built
            ),
        };
        state.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}
