#![doc = include_str!("../README.md")]

pub mod blob;
pub mod catalog;
pub mod config;
pub mod error;
pub mod ingest;
pub mod model;
pub mod query;
pub mod results;
pub mod retrieve;
pub mod store;

mod archive;
mod outbox;

pub use archive::{Archive, ArchiveStats, IngestCounts, ReceivedDataSet, VerifyReport};
pub use config::{
    ArchiveConfig, CatalogConfig, IngestConfig, S3Config, StorageBackend, StorageConfig,
};
pub use error::ArchiveError;
pub use model::{IngestReceipt, IngestSource, Refusal, RefusalReason, StoredInstance};

/// Run CPU-bound work on the rayon pool and await its result without
/// blocking the async runtime. The current tracing span travels with it.
pub async fn on_rayon<T, F>(work: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let span = tracing::Span::current();
    rayon::spawn(move || {
        let _entered = span.enter();
        let _ = tx.send(work());
    });
    rx.await.expect("rayon task panicked")
}
