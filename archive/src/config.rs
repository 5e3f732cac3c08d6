//! Typed configuration of the archive core: `[storage]`, `[catalog]` and
//! `[ingest]` of `pacs.toml`. The binary loads the file (every key can be
//! overridden by a `PACS_...` environment variable, see `pacs.example.toml`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which object store holds the blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Files under `<data_dir>/objects` (the embedded default).
    #[default]
    Filesystem,
    /// Any S3-compatible server, configured in `[storage.s3]`.
    S3,
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `filesystem` or `s3`.
    pub backend: StorageBackend,
    /// Root folder of the filesystem backend; empty means `<data_dir>/objects`.
    pub path: Option<PathBuf>,
    /// Settings of the S3 backend.
    pub s3: S3Config,
}

/// `[storage.s3]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:9000`; empty means AWS itself.
    pub endpoint: Option<String>,
    /// Region name (S3-compatible servers usually accept anything).
    pub region: String,
    /// Bucket that holds the archive; it must exist.
    pub bucket: String,
    /// Key prefix inside the bucket, e.g. `site-a/`.
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most
    /// S3-compatible servers.
    pub force_path_style: bool,
    /// Access key; empty means the standard AWS environment variables and
    /// profile chain.
    pub access_key_id: Option<String>,
    /// Secret key that goes with `access_key_id`.
    pub secret_access_key: Option<String>,
    /// Objects at least this large are sent with multipart upload.
    pub multipart_threshold: u64,
    /// Size of each multipart part (at least 5 MiB for AWS).
    pub multipart_part_size: u64,
    /// Most requests in flight at once against the server.
    pub max_concurrent_requests: usize,
    /// Attempts per request, including the first (retries back off
    /// exponentially with jitter on transient errors).
    pub max_attempts: u32,
    /// Connect timeout, milliseconds.
    pub connect_timeout_ms: u64,
    /// Timeout of one attempt of one request, milliseconds.
    pub attempt_timeout_ms: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: "us-east-1".into(),
            bucket: "pacs".into(),
            prefix: String::new(),
            force_path_style: true,
            access_key_id: None,
            secret_access_key: None,
            multipart_threshold: 16 * 1024 * 1024,
            multipart_part_size: 8 * 1024 * 1024,
            max_concurrent_requests: 16,
            max_attempts: 4,
            connect_timeout_ms: 3_000,
            attempt_timeout_ms: 60_000,
        }
    }
}

/// `[catalog]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// sqlx URL of the catalog; empty means the embedded SQLite file
    /// `<data_dir>/catalog.sqlite` (WAL mode, synchronous=FULL).
    pub url: Option<String>,
}

/// `[ingest]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// zstd level of stored blobs (1 fastest .. 19 smallest). Level 3 stores
    /// about half of typical imaging bytes at ~200 MB/s per core.
    pub zstd_level: i32,
    /// zstd level for objects whose transfer syntax is already compressed
    /// (JPEG, JPEG-LS, JPEG 2000, RLE, deflate, video): zstd gains little on
    /// them, so a fast level saves CPU.
    pub zstd_level_compressed_syntaxes: i32,
    /// zstd level for native pixel data of 16 bits or more per sample, which
    /// is stored as separate byte planes (see `pacs_archive::blob`): split,
    /// level 1 stores a CT in less than level 3 does interleaved, at several
    /// times the speed.
    pub zstd_level_pixel_planes: i32,
    /// Most instances being parsed, hashed, compressed and stored at once;
    /// further ingests wait (back-pressure on the sender). 0 = 4 x cores.
    pub max_in_flight: usize,
    /// Let a different object replace a stored one with the same SOP
    /// Instance UID. Off by default: such an object is refused.
    pub allow_replace: bool,
    /// Binary attributes longer than this many bytes are left out of the
    /// stored DICOM JSON metadata (they are bulk data, read from the blob).
    pub bulk_data_threshold: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            zstd_level: 3,
            zstd_level_compressed_syntaxes: 1,
            zstd_level_pixel_planes: 1,
            max_in_flight: 0,
            allow_replace: false,
            bulk_data_threshold: 1024,
        }
    }
}

impl IngestConfig {
    /// The zstd level for an object in this transfer syntax.
    pub fn zstd_level_for(&self, transfer_syntax_uid: &str) -> i32 {
        use dicom_encoding::TransferSyntaxIndex;
        let precompressed = dicom_transfer_syntax_registry::TransferSyntaxRegistry
            .get(transfer_syntax_uid)
            .is_none_or(|ts| ts.is_encapsulated_pixel_data())
            || crate::ingest::is_deflated(transfer_syntax_uid);
        if precompressed {
            self.zstd_level_compressed_syntaxes
        } else {
            self.zstd_level
        }
    }

    pub fn effective_max_in_flight(&self) -> usize {
        if self.max_in_flight > 0 {
            self.max_in_flight
        } else {
            4 * std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }
}

/// What the archive core needs to open an archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ArchiveConfig {
    /// The data directory (catalog, filesystem objects, index).
    pub data_dir: PathBuf,
    pub storage: StorageConfig,
    pub catalog: CatalogConfig,
    pub ingest: IngestConfig,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig::embedded(Path::new("./pacs-data"))
    }
}

impl ArchiveConfig {
    /// The embedded default in `data_dir`: filesystem objects, SQLite catalog.
    pub fn embedded(data_dir: &Path) -> Self {
        ArchiveConfig {
            data_dir: data_dir.to_path_buf(),
            storage: StorageConfig::default(),
            catalog: CatalogConfig::default(),
            ingest: IngestConfig::default(),
        }
    }

    pub fn objects_dir(&self) -> PathBuf {
        self.storage
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("objects"))
    }

    pub fn catalog_url(&self) -> String {
        match &self.catalog.url {
            Some(url) if !url.is_empty() => url.clone(),
            _ => format!(
                "sqlite://{}",
                self.data_dir.join("catalog.sqlite").to_string_lossy()
            ),
        }
    }
}
