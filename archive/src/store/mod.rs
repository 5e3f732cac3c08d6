//! Object storage behind one trait, with a filesystem and an S3 backend.
//!
//! Keys follow the layout of DESIGN.md: `blobs/sha256/ab/cd/abcd...` for
//! zstd-compressed Part-10 files keyed by the SHA-256 of the uncompressed
//! bytes. A `put` returns only once the object is durable; a crash never
//! leaves a partial object under its final key.

mod fs;
mod s3;

use bytes::Bytes;
use futures::future::BoxFuture;

pub use fs::FsStore;
pub use s3::S3Store;

/// Object key of the blob holding the Part-10 bytes whose SHA-256 is `sha256_hex`.
pub fn blob_key(sha256_hex: &str) -> String {
    format!(
        "blobs/sha256/{}/{}/{}",
        &sha256_hex[0..2],
        &sha256_hex[2..4],
        sha256_hex
    )
}

/// Failures of an object store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object store unreachable: {0}")]
    Unavailable(String),
    #[error("bucket {0:?} does not exist")]
    BucketMissing(String),
    #[error("object {0} not found")]
    NotFound(String),
    #[error("object store refused {key}: {detail}")]
    Rejected { key: String, detail: String },
    #[error("i/o on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A store of immutable objects. Implementations must make `put` durable and
/// atomic: after `Ok(())` the object survives a crash; before it, no reader
/// can see a partial object under `key`.
pub trait ObjectStore: Send + Sync + 'static {
    /// Store `data` under `key`, replacing nothing that is already there with
    /// the same content (keys are content addresses).
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Read the whole object.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Bytes, StoreError>>;
    /// Whether an object exists under `key`.
    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Check that the store is reachable and usable (bucket exists, folder
    /// writable), with a clear error otherwise.
    fn check(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Human-readable description for logs (`filesystem:/data/objects`).
    fn describe(&self) -> String;
}
