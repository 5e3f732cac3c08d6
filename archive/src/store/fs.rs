//! The filesystem backend: the embedded default under the data directory.
//!
//! A put writes a temporary file in `<root>/.tmp`, fsyncs it, renames it to
//! its final name and fsyncs the directory, so a crash leaves either the
//! whole object or nothing under the final name. The folders above it are
//! fsynced too until this process knows their entries are durable. All file I/O runs on the
//! blocking pool, never inside an async task.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::{ObjectStore, StoreError};

#[derive(Debug, Clone)]
pub struct FsStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    tmp_counter: AtomicU64,
    /// Folders (relative to the root) whose entry, and the entries of the
    /// folders above them, this process has made durable: a put into one
    /// of them fsyncs that folder only. Bounded by [`MAX_DURABLE_DIRS`].
    durable_dirs: Mutex<HashSet<PathBuf>>,
}

/// Most folders remembered as durable (a `blobs/sha256/ab/cd` layout has
/// 65 536 leaves); past this the set starts over, which only costs fsyncs.
const MAX_DURABLE_DIRS: usize = 100_000;

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl FsStore {
    /// Open (creating if needed) a store rooted at `root`. Temporary files
    /// left by a crash are removed.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let tmp = root.join(".tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(FsStore {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                tmp_counter: AtomicU64::new(0),
                durable_dirs: Mutex::new(HashSet::new()),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Path of the object stored under `key`.
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.inner.root.join(key)
    }
}

impl Inner {
    fn put_blocking(&self, key: &str, data: &[u8]) -> Result<(), StoreError> {
        let final_path = self.root.join(key);
        if final_path.exists() {
            // Content-addressed: the same key holds the same bytes.
            return Ok(());
        }
        let parent = final_path.parent().expect("object keys have a folder");
        let relative_parent = parent.strip_prefix(&self.root).unwrap_or(parent);
        let parent_durable = self.is_durable_dir(relative_parent);
        if !parent_durable {
            std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        }
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp_path = self.root.join(".tmp").join(format!(
            "{}.{}.{n}.tmp",
            std::process::id(),
            key.replace('/', "_")
        ));
        let result = (|| {
            let mut file = std::fs::File::create(&tmp_path).map_err(|e| io_err(&tmp_path, e))?;
            file.write_all(data).map_err(|e| io_err(&tmp_path, e))?;
            file.sync_all().map_err(|e| io_err(&tmp_path, e))?;
            drop(file);
            std::fs::rename(&tmp_path, &final_path).map_err(|e| io_err(&final_path, e))?;
            sync_dir(parent)?;
            if !parent_durable {
                self.sync_parents(parent)?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp_path);
        }
        result
    }

    /// Make the entry of `dir` durable, and those of the folders above it
    /// up to the first one this process already made durable: `dir` may be
    /// new, or made by a concurrent put that has not synced its parent yet.
    /// Done after the object's own fsyncs, not right after the mkdir: the
    /// count is the same, and on a journalling file system the earlier
    /// fsyncs have usually committed these entries already.
    fn sync_parents(&self, dir: &Path) -> Result<(), StoreError> {
        let relative = |d: &Path| d.strip_prefix(&self.root).unwrap_or(d).to_path_buf();
        let mut synced = Vec::new();
        let mut dir = dir;
        while dir != self.root {
            let Some(up) = dir.parent() else { break };
            sync_dir(up)?;
            synced.push(relative(dir));
            if self.is_durable_dir(&relative(up)) {
                break;
            }
            dir = up;
        }
        for d in &synced {
            self.remember_durable_dir(d);
        }
        Ok(())
    }

    fn is_durable_dir(&self, relative: &Path) -> bool {
        self.durable_dirs
            .lock()
            .is_ok_and(|dirs| dirs.contains(relative))
    }

    fn remember_durable_dir(&self, relative: &Path) {
        if let Ok(mut dirs) = self.durable_dirs.lock() {
            if dirs.len() >= MAX_DURABLE_DIRS {
                dirs.clear();
            }
            dirs.insert(relative.to_path_buf());
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::Unavailable(format!(
            "blocking task failed: {e}"
        )))
    })
}

impl ObjectStore for FsStore {
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), StoreError>> {
        let inner = self.inner.clone();
        let key = key.to_owned();
        blocking(move || inner.put_blocking(&key, &data)).boxed()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Bytes, StoreError>> {
        let path = self.path_of(key);
        let key = key.to_owned();
        blocking(move || match std::fs::read(&path) {
            Ok(bytes) => Ok(Bytes::from(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound(key)),
            Err(e) => Err(io_err(&path, e)),
        })
        .boxed()
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let path = self.path_of(key);
        blocking(move || Ok(path.is_file())).boxed()
    }

    fn check(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let tmp = self.inner.root.join(".tmp");
        blocking(move || {
            let probe = tmp.join(format!("probe.{}", std::process::id()));
            std::fs::write(&probe, b"ok").map_err(|e| io_err(&probe, e))?;
            std::fs::remove_file(&probe).map_err(|e| io_err(&probe, e))
        })
        .boxed()
    }

    fn describe(&self) -> String {
        format!("filesystem:{}", self.inner.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_is_atomic_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let key = "blobs/sha256/ab/cd/abcdef";
        assert!(!store.exists(key).await.unwrap());
        store.put(key, Bytes::from_static(b"hello")).await.unwrap();
        store.put(key, Bytes::from_static(b"hello")).await.unwrap();
        assert_eq!(&store.get(key).await.unwrap()[..], b"hello");
        assert!(store.exists(key).await.unwrap());
        // No temporary files are left behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join(".tmp")).unwrap().count(),
            0
        );
        assert!(matches!(
            store.get("blobs/sha256/00/00/0000").await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn puts_into_new_and_known_folders() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let keys = [
            "messages/sha256/ab/cd/abcd01",
            "messages/sha256/ab/cd/abcd02",
            "messages/sha256/ab/ef/abef01",
            "blobs/sha256/ab/cd/abcd01",
        ];
        for key in keys {
            store.put(key, Bytes::from(key.as_bytes())).await.unwrap();
        }
        for key in keys {
            assert_eq!(&store.get(key).await.unwrap()[..], key.as_bytes());
        }
        assert!(
            store
                .inner
                .is_durable_dir(Path::new("messages/sha256/ab/cd"))
        );
        // A folder removed behind the store's back is made again.
        std::fs::remove_dir_all(dir.path().join("messages")).unwrap();
        let reopened = FsStore::open(dir.path()).unwrap();
        reopened
            .put(keys[0], Bytes::from_static(b"again"))
            .await
            .unwrap();
        assert_eq!(&reopened.get(keys[0]).await.unwrap()[..], b"again");
    }
}
