//! The [`Archive`]: ingest pipeline, retrieval, verification and statistics
//! over one object store and one catalog.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::blob::{self, compress_blob, compress_frames};
use crate::catalog::{BlobRecord, Catalog, CatalogStats, RecordOutcome};
use crate::catalog::{MessageBlob, MessageLocation, MessageOutcome};
use crate::config::{ArchiveConfig, StorageBackend};
use crate::error::ArchiveError;
use crate::ingest::{parse_part10, part10_prefix};
use crate::model::{IngestReceipt, IngestSource, Refusal, RefusalReason, StoredInstance};
use crate::on_rayon;
use crate::outbox;
use crate::results::{MessageReceipt, MessageRefusal, ResultMessage, message_key};
use crate::retrieve::{decode_blob, decode_verified, sha256_hex};
use crate::store::{FsStore, ObjectStore, S3Store, StoreError, blob_key};

/// An open archive. Cheap to clone; clones share the store, the catalog and
/// the in-flight limit.
#[derive(Clone)]
pub struct Archive {
    inner: Arc<Inner>,
}

struct Inner {
    config: ArchiveConfig,
    store: Arc<dyn ObjectStore>,
    catalog: Catalog,
    in_flight: Semaphore,
    counters: IngestCounters,
    /// Writes raw messages from the catalog's outbox to the object store.
    mover: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.mover.abort();
    }
}

/// What a C-STORE says of the data set it carries: what its Part-10 file
/// meta group is made of.
#[derive(Debug, Clone, Copy)]
pub struct ReceivedDataSet<'a> {
    pub transfer_syntax_uid: &'a str,
    pub sop_class_uid: &'a str,
    pub sop_instance_uid: &'a str,
    /// The sender's AE title (Source Application Entity Title).
    pub calling_ae: Option<&'a str>,
}

/// Counts of ingest outcomes since the archive was opened, whatever the
/// front door (C-STORE, STOW-RS, import).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestCounts {
    pub stored: u64,
    pub duplicates: u64,
    pub refused: u64,
    /// Part-10 bytes of every object received, stored or not.
    pub bytes_received: u64,
    /// Compressed bytes written for new instances.
    pub bytes_stored: u64,
}

#[derive(Default)]
struct IngestCounters {
    stored: AtomicU64,
    duplicates: AtomicU64,
    refused: AtomicU64,
    bytes_received: AtomicU64,
    bytes_stored: AtomicU64,
}

impl IngestCounters {
    fn count(&self, receipt: &IngestReceipt, received: u64) {
        self.bytes_received.fetch_add(received, Ordering::Relaxed);
        match receipt {
            IngestReceipt::Stored(i) | IngestReceipt::Replaced(i) => {
                self.stored.fetch_add(1, Ordering::Relaxed);
                self.bytes_stored
                    .fetch_add(i.stored_size, Ordering::Relaxed);
            }
            IngestReceipt::Duplicate(_) => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            IngestReceipt::Refused(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn snapshot(&self) -> IngestCounts {
        IngestCounts {
            stored: self.stored.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            bytes_stored: self.bytes_stored.load(Ordering::Relaxed),
        }
    }
}

/// Counts and sizes of the archive.
pub type ArchiveStats = CatalogStats;

/// The result of [`Archive::verify`].
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Instances whose blob was read and checked.
    pub checked: u64,
    /// Raw messages (HL7, FHIR) whose blob was read and checked.
    pub messages_checked: u64,
    /// (SOP Instance UID, what is wrong) for every damaged or missing blob.
    pub damaged: Vec<(String, String)>,
}

impl Archive {
    /// Open the archive described by `config`: the object store it names
    /// (checked to be reachable) and the catalog (migrated).
    pub async fn open(config: ArchiveConfig) -> Result<Self, ArchiveError> {
        std::fs::create_dir_all(&config.data_dir)?;
        let store: Arc<dyn ObjectStore> = match config.storage.backend {
            StorageBackend::Filesystem => Arc::new(FsStore::open(&config.objects_dir())?),
            StorageBackend::S3 => Arc::new(S3Store::connect(&config.storage.s3).await?),
        };
        store.check().await?;
        Self::open_with_store(config, store).await
    }

    /// Open with an object store built by the caller.
    pub async fn open_with_store(
        config: ArchiveConfig,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Self, ArchiveError> {
        std::fs::create_dir_all(&config.data_dir)?;
        let catalog = Catalog::open(&config.catalog_url()).await?;
        let permits = config.ingest.effective_max_in_flight();
        tracing::info!(
            store = %store.describe(),
            catalog = %config.catalog_url(),
            max_in_flight = permits,
            "archive open"
        );
        let mover = tokio::spawn(outbox::run(Arc::clone(&store), catalog.clone()));
        Ok(Archive {
            inner: Arc::new(Inner {
                config,
                store,
                catalog,
                in_flight: Semaphore::new(permits),
                counters: IngestCounters::default(),
                mover,
            }),
        })
    }

    pub fn config(&self) -> &ArchiveConfig {
        &self.inner.config
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.store
    }

    /// Ingest a data set received with its transfer syntax (C-STORE): the
    /// stored object is a Part-10 file whose data set bytes are exactly the
    /// ones received.
    pub async fn ingest_dataset(
        &self,
        dataset: &[u8],
        transfer_syntax_uid: &str,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        calling_ae: Option<&str>,
        source: IngestSource,
    ) -> IngestReceipt {
        let received = ReceivedDataSet {
            transfer_syntax_uid,
            sop_class_uid,
            sop_instance_uid,
            calling_ae,
        };
        self.ingest_received(received, source, |prefix| {
            let mut bytes = Vec::with_capacity(prefix.len() + dataset.len());
            bytes.extend_from_slice(prefix);
            bytes.extend_from_slice(dataset);
            Bytes::from(bytes)
        })
        .await
    }

    /// Ingest a received data set whose Part-10 object `assemble` puts
    /// together from the prefix it is given (preamble and file meta group)
    /// and the data set bytes: a receiver that kept room in front of the
    /// data set writes the prefix there instead of copying the data set.
    pub async fn ingest_received(
        &self,
        received: ReceivedDataSet<'_>,
        source: IngestSource,
        assemble: impl FnOnce(&[u8]) -> Bytes,
    ) -> IngestReceipt {
        let ReceivedDataSet {
            transfer_syntax_uid,
            sop_class_uid,
            sop_instance_uid,
            calling_ae,
        } = received;
        match part10_prefix(
            transfer_syntax_uid,
            sop_class_uid,
            sop_instance_uid,
            calling_ae,
        ) {
            Ok(prefix) => self.ingest_part10(assemble(&prefix), source).await,
            Err(reason) => IngestReceipt::Refused(Refusal {
                reason,
                sop_class_uid: Some(sop_class_uid.to_owned()),
                sop_instance_uid: Some(sop_instance_uid.to_owned()),
            }),
        }
    }

    /// Ingest a Part-10 object. Returns only when the outcome is final: a
    /// success receipt means the blob is durable and the catalog transaction
    /// has committed.
    pub async fn ingest_part10(&self, bytes: Bytes, source: IngestSource) -> IngestReceipt {
        self.ingest_part10_into(bytes, source, None).await
    }

    /// Ingest a Part-10 object that must belong to `study` (STOW-RS to
    /// `/studies/{study}`): an object of another study is refused.
    pub async fn ingest_part10_into(
        &self,
        bytes: Bytes,
        source: IngestSource,
        study: Option<&str>,
    ) -> IngestReceipt {
        let received = bytes.len() as u64;
        let receipt = self
            .ingest_part10_counted(bytes, source, study.map(str::to_owned))
            .await;
        self.inner.counters.count(&receipt, received);
        receipt
    }

    /// Ingest counters since the archive was opened (for metrics).
    pub fn counters(&self) -> IngestCounts {
        self.inner.counters.snapshot()
    }

    async fn ingest_part10_counted(
        &self,
        bytes: Bytes,
        source: IngestSource,
        expected_study: Option<String>,
    ) -> IngestReceipt {
        let _permit = self
            .inner
            .in_flight
            .acquire()
            .await
            .expect("in-flight semaphore never closed");
        let ingest_config = self.inner.config.ingest.clone();
        let cpu_input = bytes.clone();
        // Parse and validate, then hash and compress at once, on the rayon
        // pool: many instances are in flight, and a large object is itself
        // split into zstd frames, so one slow sender still uses every core.
        // A refused object is never hashed or compressed.
        let cpu = on_rayon(move || {
            let data = &cpu_input[..];
            let anonymous = |reason| Refusal {
                reason,
                sop_class_uid: None,
                sop_instance_uid: None,
            };
            let parsed =
                parse_part10(data, ingest_config.bulk_data_threshold).map_err(anonymous)?;
            if let Some(expected) = expected_study
                && parsed.attributes.study_instance_uid != expected
            {
                let a = parsed.attributes;
                return Err(Refusal {
                    reason: RefusalReason::WrongStudy {
                        expected,
                        found: a.study_instance_uid,
                    },
                    sop_class_uid: Some(a.sop_class_uid),
                    sop_instance_uid: Some(a.sop_instance_uid),
                });
            }
            let levels = blob::Levels {
                bytes: ingest_config.zstd_level_for(&parsed.attributes.transfer_syntax_uid),
                planes: ingest_config.zstd_level_pixel_planes,
            };
            let (sha256, compressed) = rayon::join(
                || sha256_hex(data),
                || blob::encode(data, parsed.pixel_planes, levels),
            );
            Ok::<_, Refusal>((parsed, sha256, compressed))
        })
        .await;
        let (parsed, sha256, compressed) = match cpu {
            Ok(done) => done,
            Err(refusal) => {
                tracing::info!(%source, reason = %refusal.reason, "refused");
                return IngestReceipt::Refused(refusal);
            }
        };

        let attrs = parsed.attributes;
        let refuse = |reason: RefusalReason| {
            tracing::warn!(%source, sop_instance_uid = %attrs.sop_instance_uid, %reason, "refused");
            IngestReceipt::Refused(Refusal {
                reason,
                sop_class_uid: Some(attrs.sop_class_uid.clone()),
                sop_instance_uid: Some(attrs.sop_instance_uid.clone()),
            })
        };
        let instance = |stored_size: u64, change_seq: Option<i64>| StoredInstance {
            sop_class_uid: attrs.sop_class_uid.clone(),
            sop_instance_uid: attrs.sop_instance_uid.clone(),
            study_instance_uid: attrs.study_instance_uid.clone(),
            series_instance_uid: attrs.series_instance_uid.clone(),
            transfer_syntax_uid: attrs.transfer_syntax_uid.clone(),
            sha256: sha256.clone(),
            original_size: bytes.len() as u64,
            stored_size,
            change_seq,
        };
        let allow_replace = self.inner.config.ingest.allow_replace;
        let catalog = &self.inner.catalog;

        let precheck = match catalog.precheck(&attrs.sop_instance_uid, &sha256).await {
            Ok(p) => p,
            Err(e) => return refuse(RefusalReason::CatalogUnavailable(e.to_string())),
        };
        match precheck.existing {
            Some((stored_sha, stored_size)) if stored_sha == sha256 => {
                return IngestReceipt::Duplicate(instance(stored_size, None));
            }
            Some((stored_sha, _)) if !allow_replace => {
                return refuse(RefusalReason::Conflict {
                    sop_instance_uid: attrs.sop_instance_uid.clone(),
                    stored_sha256: stored_sha,
                    received_sha256: sha256.clone(),
                });
            }
            _ => {}
        }

        let compressed = match compressed {
            Ok(c) => Bytes::from(c),
            Err(e) => return refuse(RefusalReason::StoreUnavailable(format!("zstd: {e}"))),
        };
        let key = blob_key(&sha256);
        let already_stored = precheck.blob_stored_size;
        if already_stored.is_none()
            && let Err(e) = self.inner.store.put(&key, compressed.clone()).await
        {
            return refuse(RefusalReason::StoreUnavailable(e.to_string()));
        }
        let blob = BlobRecord {
            sha256: sha256.clone(),
            blob_key: key,
            original_size: bytes.len() as u64,
            stored_size: compressed.len() as u64,
            compression: if blob::is_planar(&compressed) {
                "zstd-planar"
            } else {
                "zstd"
            },
        };
        match catalog
            .record_instance_with_report(
                &attrs,
                &blob,
                &source,
                &parsed.metadata_json,
                parsed.document.as_ref(),
                allow_replace,
            )
            .await
        {
            Ok(RecordOutcome::Recorded {
                seq,
                stored_size,
                replaced,
            }) => {
                let stored = instance(stored_size, Some(seq));
                tracing::debug!(%source, sop_instance_uid = %attrs.sop_instance_uid, seq, replaced, "stored");
                if replaced {
                    IngestReceipt::Replaced(stored)
                } else {
                    IngestReceipt::Stored(stored)
                }
            }
            Ok(RecordOutcome::AlreadyPresent {
                sha256: stored_sha,
                stored_size,
            }) => {
                if stored_sha == sha256 {
                    IngestReceipt::Duplicate(instance(stored_size, None))
                } else {
                    refuse(RefusalReason::Conflict {
                        sop_instance_uid: attrs.sop_instance_uid.clone(),
                        stored_sha256: stored_sha,
                        received_sha256: sha256.clone(),
                    })
                }
            }
            Err(e) => refuse(RefusalReason::CatalogUnavailable(e.to_string())),
        }
    }

    /// Record a lab-result or report message (HL7 v2, FHIR): the raw bytes
    /// are stored like an image (content-addressed, compressed, hashed),
    /// then its results in one catalog transaction. Returns only when the
    /// outcome is final: `Stored` means both are durable, so the front door
    /// may acknowledge. A message with the same sender and control id as a
    /// recorded one is a `Duplicate` and stores nothing.
    pub async fn ingest_message(
        &self,
        raw: Bytes,
        message: ResultMessage,
        source: IngestSource,
    ) -> MessageReceipt {
        let invalid = |why: &str| MessageReceipt::Refused(MessageRefusal::Invalid(why.to_owned()));
        if message.patients.is_empty()
            || message
                .patients
                .iter()
                .any(|g| g.patient.id.trim().is_empty())
        {
            return invalid("the message names no patient identifier");
        }
        if message.control_id.trim().is_empty() {
            return invalid("the message has no control id");
        }
        if message.patients.iter().all(|g| g.reports.is_empty()) {
            return invalid("the message holds no report or result");
        }
        let unavailable = |e: String| MessageReceipt::Refused(MessageRefusal::Unavailable(e));
        // The same key again: the same message re-sent (its ACK was lost),
        // or another message under a reused control id. Nothing is written
        // for either.
        let already = |message_id: i64, stored: &str, sha256: &str| {
            if stored == sha256 {
                MessageReceipt::Duplicate { message_id }
            } else {
                MessageReceipt::Refused(MessageRefusal::Conflict(format!(
                    "{} from {} is message {message_id}",
                    message.control_id, message.sender
                )))
            }
        };
        let catalog = &self.inner.catalog;
        // A lab message is a few kilobytes: hashing and compressing it
        // takes microseconds, less than the hop to another thread and back,
        // and less than asking the catalog first whether it is a re-send
        // (the recording transaction finds that out anyway). A large one
        // is checked first, so a re-sent one is never compressed.
        let small = raw.len() <= INLINE_MESSAGE_LIMIT;
        if !small {
            let recorded = match catalog
                .message_by_key(&message.sender, &message.control_id)
                .await
            {
                Ok(recorded) => recorded,
                Err(e) => return unavailable(e.to_string()),
            };
            if let Some((message_id, stored)) = recorded {
                let input = raw.clone();
                let sha256 = on_rayon(move || sha256_hex(&input)).await;
                return already(message_id, &stored, &sha256);
            }
        }
        let level = self.inner.config.ingest.zstd_level;
        let (sha256, compressed) = if small {
            (sha256_hex(&raw), compress_blob(&raw, level))
        } else {
            let input = raw.clone();
            on_rayon(move || rayon::join(|| sha256_hex(&input), || compress_frames(&input, level)))
                .await
        };
        let compressed = match compressed {
            Ok(c) => Bytes::from(c),
            Err(e) => return unavailable(format!("zstd: {e}")),
        };
        let blob = MessageBlob {
            blob_key: message_key(&sha256),
            sha256: sha256.clone(),
            original_size: raw.len() as u64,
            stored_size: compressed.len() as u64,
        };
        // Durable with its catalog rows in one commit (the outbox); the
        // mover writes it to the object store afterwards.
        match catalog
            .record_message(&message, &blob, Some(compressed), &source.to_string())
            .await
        {
            Ok(MessageOutcome::Recorded {
                message_id,
                reports,
                ..
            }) => {
                tracing::info!(%source, message_id, reports = reports.len(), sender = %message.sender, control_id = %message.control_id, "message stored");
                MessageReceipt::Stored {
                    message_id,
                    reports,
                }
            }
            Ok(MessageOutcome::AlreadyPresent {
                message_id,
                sha256: stored,
            }) => already(message_id, &stored, &sha256),
            Err(e) => unavailable(e.to_string()),
        }
    }

    /// Read an instance back: fetch its blob, decompress it, verify its
    /// SHA-256 against the catalog and return the original Part-10 bytes.
    pub async fn retrieve(&self, sop_instance_uid: &str) -> Result<Bytes, ArchiveError> {
        let row = self
            .inner
            .catalog
            .instance(sop_instance_uid)
            .await?
            .ok_or_else(|| ArchiveError::InstanceNotFound(sop_instance_uid.to_owned()))?;
        let blob = self
            .inner
            .store
            .get(&row.blob_key)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => ArchiveError::Integrity {
                    sop_instance_uid: row.sop_instance_uid.clone(),
                    blob_key: row.blob_key.clone(),
                    detail: "blob is missing from the object store".into(),
                },
                other => ArchiveError::Store(other),
            })?;
        on_rayon(move || decode_blob(&row, &blob)).await
    }

    /// Re-read and re-hash every stored instance; report what is damaged.
    pub async fn verify(
        &self,
        on_progress: impl Fn(u64) + Send + Sync,
    ) -> Result<VerifyReport, ArchiveError> {
        let rows = self.inner.catalog.instances(None).await?;
        let concurrency = self.inner.config.ingest.effective_max_in_flight();
        let mut report = VerifyReport::default();
        let mut results = futures::stream::iter(rows)
            .map(|row| async move {
                let uid = row.sop_instance_uid.clone();
                (uid, self.retrieve(&row.sop_instance_uid).await)
            })
            .buffer_unordered(concurrency);
        while let Some((uid, result)) = results.next().await {
            report.checked += 1;
            on_progress(report.checked);
            match result {
                Ok(_) => {}
                Err(ArchiveError::Integrity { detail, .. }) => report.damaged.push((uid, detail)),
                Err(ArchiveError::Store(e)) => return Err(ArchiveError::Store(e)),
                Err(e) => report.damaged.push((uid, e.to_string())),
            }
        }
        let mut last = None;
        for at in self.inner.catalog.message_blobs().await? {
            report.messages_checked += 1;
            let what = format!("message {}", at.message_id);
            let result = match self.message_bytes(&at, &mut last).await {
                Ok(Some(blob)) => decode_message(at, blob).await.map(|_| ()),
                Ok(None) => {
                    report
                        .damaged
                        .push((what, "blob is missing from the object store".into()));
                    continue;
                }
                Err(ArchiveError::Store(e)) => return Err(ArchiveError::Store(e)),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                let detail = match e {
                    ArchiveError::Integrity { detail, .. } => detail,
                    other => other.to_string(),
                };
                report.damaged.push((what, detail));
            }
        }
        report.damaged.sort();
        Ok(report)
    }

    /// The raw bytes of a recorded message, checked against its SHA-256.
    pub async fn retrieve_message(&self, message_id: i64) -> Result<Bytes, ArchiveError> {
        let at = self
            .inner
            .catalog
            .message_blob(message_id)
            .await?
            .ok_or_else(|| ArchiveError::InstanceNotFound(format!("message {message_id}")))?;
        let blob = self
            .message_bytes(&at, &mut None)
            .await?
            .ok_or_else(|| ArchiveError::Store(StoreError::NotFound(at.blob_key.clone())))?;
        decode_message(at, blob).await
    }

    /// Write every raw message still in the catalog's outbox to the object
    /// store now (the background mover does it too); the number written.
    /// `pacs serve` calls it on shutdown.
    pub async fn flush_outbox(&self) -> Result<usize, ArchiveError> {
        let mut moved = 0;
        loop {
            let n = outbox::move_batch(self.inner.store.as_ref(), &self.inner.catalog).await?;
            if n == 0 {
                return Ok(moved);
            }
            moved += n;
        }
    }

    /// The compressed bytes of a raw message: its object, its range of a
    /// pack (`last` keeps the last pack read, for reads in key order), or
    /// its outbox row while the mover has not written it out yet.
    async fn message_bytes(
        &self,
        at: &MessageLocation,
        last: &mut Option<(String, Bytes)>,
    ) -> Result<Option<Bytes>, ArchiveError> {
        let object = match last {
            Some((key, bytes)) if *key == at.blob_key => Ok(bytes.clone()),
            _ => self.inner.store.get(&at.blob_key).await,
        };
        match object {
            Ok(object) => {
                let bytes = match at.offset {
                    None => object.clone(),
                    Some(offset) => {
                        let start = offset as usize;
                        let end = start.saturating_add(at.stored_size as usize);
                        if end > object.len() {
                            return Err(ArchiveError::Integrity {
                                sop_instance_uid: format!("message {}", at.message_id),
                                blob_key: at.blob_key.clone(),
                                detail: format!(
                                    "pack {} holds {} bytes, the message ends at {end}",
                                    at.blob_key,
                                    object.len()
                                ),
                            });
                        }
                        object.slice(start..end)
                    }
                };
                *last = Some((at.blob_key.clone(), object));
                Ok(Some(bytes))
            }
            Err(StoreError::NotFound(_)) => {
                if let Some(bytes) = self.inner.catalog.outbox_blob(at.message_id).await? {
                    return Ok(Some(bytes));
                }
                // Packed by the mover between the two reads: read it where
                // the catalog says it is now.
                match self.inner.catalog.message_blob(at.message_id).await? {
                    Some(now) if now != *at => Box::pin(self.message_bytes(&now, last)).await,
                    _ => Ok(None),
                }
            }
            Err(e) => Err(ArchiveError::Store(e)),
        }
    }

    pub async fn stats(&self) -> Result<ArchiveStats, ArchiveError> {
        self.inner.catalog.stats().await
    }
}

/// Messages up to this size are hashed and compressed on the calling task
/// (the HL7 listener parses messages under 64 KB inline for the same reason).
const INLINE_MESSAGE_LIMIT: usize = 64 * 1024;

/// Decompress a raw message's bytes and check them against its SHA-256.
async fn decode_message(at: MessageLocation, blob: Bytes) -> Result<Bytes, ArchiveError> {
    on_rayon(move || {
        decode_verified(
            &format!("message {}", at.message_id),
            &at.blob_key,
            &at.sha256,
            at.original_size as i64,
            &blob,
        )
    })
    .await
}
