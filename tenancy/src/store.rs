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
    /// Counts publishes, for those who wait for the next snapshot (the traffic view's long polls).
    published: tokio::sync::watch::Sender<u64>,
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
            published: tokio::sync::watch::Sender::new(0),
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
        drop(f);
        self.published.send_modify(|n| *n += 1);
    }

    /// Notified on every publish.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
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

/// The live policy set of a directory: reloads swap in a new set only if it validates, so a
/// broken edit never replaces a good loaded set.
#[derive(Debug)]
pub struct PolicyStore {
    dir: std::path::PathBuf,
    current: ArcSwap<crate::PolicyEngine>,
    outcome: Mutex<ReloadOutcome>,
}

/// Counters and the last problem, for logs, metrics and `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct ReloadOutcome {
    pub reloads: u64,
    pub failures: u64,
    pub last_error: Option<String>,
}

impl PolicyStore {
    /// Loads `dir`; fails if the first load is not valid (there is no good set to keep yet).
    pub fn load(dir: &std::path::Path) -> Result<PolicyStore, crate::PolicyError> {
        let engine = crate::PolicyEngine::load_dir(dir)?;
        Ok(PolicyStore {
            dir: dir.to_path_buf(),
            current: ArcSwap::from_pointee(engine),
            outcome: Mutex::new(ReloadOutcome::default()),
        })
    }

    /// A store holding `engine` (the embedded policies); reloading re-reads `dir` if it exists.
    pub fn fixed(engine: crate::PolicyEngine, dir: &std::path::Path) -> PolicyStore {
        PolicyStore {
            dir: dir.to_path_buf(),
            current: ArcSwap::from_pointee(engine),
            outcome: Mutex::new(ReloadOutcome::default()),
        }
    }

    pub fn current(&self) -> Arc<crate::PolicyEngine> {
        self.current.load_full()
    }

    /// Re-reads the directory. On error the current set stays and the error is returned and kept.
    pub fn reload(&self) -> Result<(), crate::PolicyError> {
        let result = crate::PolicyEngine::load_dir(&self.dir);
        let mut outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(engine) => {
                self.current.store(Arc::new(engine));
                outcome.reloads += 1;
                outcome.last_error = None;
                Ok(())
            }
            Err(e) => {
                outcome.failures += 1;
                outcome.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// The directory the policies are loaded from.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn outcome(&self) -> ReloadOutcome {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_reload_keeps_the_good_set() {
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let dir =
            std::env::temp_dir().join(format!("tenantry-policy-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(&shipped).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
            }
        }
        let store = PolicyStore::load(&dir).unwrap();
        let good = store.current().len();

        std::fs::write(
            dir.join("broken.cedar"),
            "@id(\"b\")\n@message(\"m\")\nforbid (principal, action, resource) when { 1 };\n",
        )
        .unwrap();
        let err = store.reload().unwrap_err().to_string();
        assert!(err.contains("broken.cedar:3:"), "{err}");
        assert_eq!(store.current().len(), good, "the good set stays");
        assert_eq!(store.outcome().failures, 1);
        assert!(store.outcome().last_error.unwrap().contains("broken.cedar"));

        std::fs::write(
            dir.join("broken.cedar"),
            "@id(\"b\")\n@message(\"m\")\nforbid (principal, action, resource) when { false };\n",
        )
        .unwrap();
        store.reload().unwrap();
        assert_eq!(store.current().len(), good + 1);
        assert_eq!(store.outcome().last_error, None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
