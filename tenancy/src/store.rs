//! The live tenant snapshot: one writer swaps it, every request reads it without locking.
//!
//! Like kube-rs's reflector store: a single task (the Postgres watcher or the file reloader)
//! publishes whole snapshots; readers take an `Arc` and keep a consistent view for the length of
//! one decision, however long a reload takes.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::directory::Directory;

/// What the store knows about its own freshness, for `/readyz` and metrics.
#[derive(Debug, Clone)]
pub struct Freshness {
    /// When the source last confirmed the snapshot is current (a load or a version check).
    pub confirmed_at: Option<Instant>,
    /// The last failure since then, if any.
    pub last_error: Option<String>,
    /// Successful loads since start.
    pub loads: u64,
}

#[derive(Debug)]
pub struct DirectoryStore {
    current: ArcSwap<Directory>,
    freshness: Mutex<Freshness>,
}

impl DirectoryStore {
    /// A store that has not loaded anything yet: it holds an empty directory and is not ready.
    pub fn unloaded() -> DirectoryStore {
        DirectoryStore {
            current: ArcSwap::from_pointee(Directory::empty()),
            freshness: Mutex::new(Freshness {
                confirmed_at: None,
                last_error: None,
                loads: 0,
            }),
        }
    }

    /// A store holding `directory`, already loaded (file sources, tests).
    pub fn loaded(directory: Directory) -> DirectoryStore {
        let store = DirectoryStore::unloaded();
        store.publish(directory);
        store
    }

    /// The snapshot to decide with.
    pub fn current(&self) -> Arc<Directory> {
        self.current.load_full()
    }

    /// Swaps in a new snapshot and marks the store fresh.
    pub fn publish(&self, directory: Directory) {
        self.current.store(Arc::new(directory));
        let mut f = self.freshness_guard();
        f.confirmed_at = Some(Instant::now());
        f.last_error = None;
        f.loads += 1;
    }

    /// The source confirmed the current snapshot is still current.
    pub fn record_fresh(&self) {
        let mut f = self.freshness_guard();
        f.confirmed_at = Some(Instant::now());
        f.last_error = None;
    }

    /// The source failed; the last snapshot stays in place.
    pub fn record_failure(&self, error: String) {
        self.freshness_guard().last_error = Some(error);
    }

    pub fn freshness(&self) -> Freshness {
        self.freshness_guard().clone()
    }

    /// Loaded at least once, and confirmed within `max_age`.
    pub fn is_fresh(&self, max_age: Duration) -> bool {
        self.freshness_guard()
            .confirmed_at
            .is_some_and(|t| t.elapsed() <= max_age)
    }

    fn freshness_guard(&self) -> std::sync::MutexGuard<'_, Freshness> {
        // A poisoned lock only means a panic elsewhere while holding plain data; keep going.
        self.freshness.lock().unwrap_or_else(|p| p.into_inner())
    }
}
