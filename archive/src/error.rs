//! The one error type of the archive crate.

use crate::store::StoreError;

/// Everything that can go wrong inside the archive, outside of an ingest
/// (ingest failures are folded into [`crate::IngestReceipt::Refused`]).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("catalog: {0}")]
    Catalog(#[from] sqlx::Error),
    #[error("catalog write failed: {0}")]
    CatalogWrite(String),
    /// From the writer's connection (see `catalog::WriteConn`).
    #[error("catalog: {0}")]
    CatalogWriter(#[from] rusqlite::Error),
    #[error("catalog migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("object store: {0}")]
    Store(#[from] StoreError),
    #[error("no instance with SOP Instance UID {0}")]
    InstanceNotFound(String),
    #[error(
        "integrity error: instance {sop_instance_uid} (blob {blob_key}) does not match its recorded SHA-256: {detail}"
    )]
    Integrity {
        sop_instance_uid: String,
        blob_key: String,
        detail: String,
    },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
