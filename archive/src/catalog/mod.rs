//! The SQL catalog: patients, studies, series, instances, blobs and the
//! change feed.
//!
//! SQLite in WAL mode with `synchronous=FULL` is the embedded default: a
//! committed transaction survives power loss. Reads go through a sqlx pool.
//! Writes go through exactly one connection, owned by the writer thread
//! (SQLite has one writer; queueing for it is cheaper than lock retries).
//! That connection is a plain synchronous one (rusqlite, on the same SQLite
//! library as sqlx): each write is handed to the thread once and answered
//! once, where sqlx's connection thread answers every statement and every
//! row in its own hand-over, each a cross-core wake-up. Queries use `$n`
//! placeholders and portable SQL (`ON CONFLICT`, `RETURNING`).

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection as _, Row, SqliteConnection};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::ArchiveError;
use crate::ingest::ReportDocument;
use crate::model::{IngestSource, InstanceAttributes};

mod tokens;
pub use tokens::{ApiToken, TokenRole};

mod documents;
pub mod fhir;
mod reports;
mod results;
mod studies;
pub use reports::ReportRecord;
pub use results::{MessageBlob, MessageLocation, MessageOutcome};
pub use studies::StudyRecord;

/// Most ids or UIDs bound in one `IN (...)` list.
const MAX_IN_LIST: usize = 500;

/// `$1, $2, ... $n`.
fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the catalog knows of one stored instance.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct InstanceRow {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub series_instance_uid: String,
    pub study_instance_uid: String,
    pub transfer_syntax_uid: String,
    pub sha256: String,
    pub blob_key: String,
    pub original_size: i64,
    pub stored_size: i64,
}

/// A blob about to be referenced by an instance row.
#[derive(Debug, Clone)]
pub struct BlobRecord {
    pub sha256: String,
    pub blob_key: String,
    pub original_size: u64,
    pub stored_size: u64,
    /// How the blob is compressed: `zstd`, or `zstd-planar` (see
    /// `crate::blob`). Informational: the blob itself tells on reading.
    pub compression: &'static str,
}

/// The outcome of recording an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// New rows were written (or, with `replaced`, an instance row was
    /// pointed at a new blob); the change feed has entry `seq`.
    Recorded {
        seq: i64,
        stored_size: u64,
        replaced: bool,
    },
    /// Another ingest of the same SOP Instance UID won the race; its SHA-256.
    AlreadyPresent { sha256: String, stored_size: u64 },
}

/// One entry of the change feed: an instance (stored or replaced, with its
/// series and study) or a report (stored or linked to a study, with that
/// study when it has one).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Change {
    pub seq: i64,
    /// `instance-stored`, `instance-replaced`, `report-stored`, `report-linked`.
    pub kind: String,
    pub sop_instance_uid: Option<String>,
    pub series_instance_uid: Option<String>,
    pub study_instance_uid: Option<String>,
    pub report_id: Option<i64>,
    pub recorded_at: String,
}

/// Counts and sizes for `pacs stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogStats {
    pub patients: i64,
    pub studies: i64,
    pub series: i64,
    pub instances: i64,
    pub blobs: i64,
    /// Sum of the Part-10 sizes of all instances.
    pub original_bytes: i64,
    /// Sum of the compressed sizes of all distinct blobs.
    pub stored_bytes: i64,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    /// The queue of the writer thread, which owns the one writing
    /// connection (records group-committed; other writes, such as API
    /// tokens and the message mover's, run in turn as [`PendingWrite::Job`]).
    writes: mpsc::Sender<PendingWrite>,
    reader: SqlitePool,
    /// The newest change seq committed by this process's writers.
    committed_seq: Arc<watch::Sender<i64>>,
}

/// What the archive needs to know before storing an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Precheck {
    /// SHA-256 and stored size of the instance already stored under this
    /// SOP Instance UID, if any.
    pub existing: Option<(String, u64)>,
    /// Stored size of a blob with the object's SHA-256, if one is recorded.
    pub blob_stored_size: Option<u64>,
}

/// An instance waiting for the writer thread's next group commit.
struct PendingRecord {
    attrs: InstanceAttributes,
    blob: BlobRecord,
    source: String,
    metadata_json: String,
    /// The report the instance holds (SR, Encapsulated PDF), if any.
    document: Option<ReportDocument>,
    replace: bool,
    reply: oneshot::Sender<Result<RecordOutcome, ArchiveError>>,
}

/// The writer thread's connection.
pub(crate) type WriteConn = rusqlite::Connection;

/// A write for the writer thread.
enum PendingWrite {
    /// Group-committed with the records queued with it.
    Instance(Box<PendingRecord>),
    /// Group-committed with the records queued with it.
    Message(Box<results::PendingMessage>),
    /// Any other write, run alone between groups (it answers its caller
    /// itself and opens its own transaction if it needs one).
    Job(Box<dyn FnOnce(&mut WriteConn) + Send>),
}

impl std::fmt::Debug for PendingWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl PendingWrite {
    /// Write it inside the group's transaction (see [`GroupTx`]).
    fn write(&self, tx: &WriteConn, group: &mut GroupTx) -> Result<Written, ArchiveError> {
        Ok(match self {
            PendingWrite::Instance(rec) => Written::Instance(record_in_tx(tx, rec, group)?),
            PendingWrite::Message(m) => {
                Written::Message(results::record_message_in_tx(tx, m, group)?)
            }
            PendingWrite::Job(_) => {
                return Err(ArchiveError::CatalogWrite(
                    "a job cannot be part of a group commit".into(),
                ));
            }
        })
    }

    /// What it is, for the log.
    fn describe(&self) -> String {
        match self {
            PendingWrite::Instance(rec) => format!("instance {}", rec.attrs.sop_instance_uid),
            PendingWrite::Message(m) => {
                format!("message {} from {}", m.message.control_id, m.message.sender)
            }
            PendingWrite::Job(_) => "catalog job".to_owned(),
        }
    }

    /// Answer the waiting ingest.
    fn answer(self, outcome: Result<Written, ArchiveError>) {
        match (self, outcome) {
            (PendingWrite::Instance(rec), Ok(Written::Instance(o))) => {
                let _ = rec.reply.send(Ok(o));
            }
            (PendingWrite::Message(m), Ok(Written::Message(o))) => {
                let _ = m.reply.send(Ok(o));
            }
            (PendingWrite::Instance(rec), Err(e)) => {
                let _ = rec.reply.send(Err(e));
            }
            (PendingWrite::Message(m), Err(e)) => {
                let _ = m.reply.send(Err(e));
            }
            // A job answers its caller itself; dropping it unrun closes
            // its reply channel, which the caller reports.
            (PendingWrite::Job(_), _) => {}
            (pending, Ok(_)) => {
                let e =
                    ArchiveError::CatalogWrite("the writer answered another kind of write".into());
                pending.answer(Err(e));
            }
        }
    }
}

/// What one write of a group did.
enum Written {
    Instance(RecordOutcome),
    Message(MessageOutcome),
}

impl Written {
    /// The newest change seq it appended, if any.
    fn seq(&self) -> Option<i64> {
        match self {
            Written::Instance(RecordOutcome::Recorded { seq, .. })
            | Written::Message(MessageOutcome::Recorded { seq, .. }) => Some(*seq),
            _ => None,
        }
    }
}

/// Most records committed together in one transaction.
const MAX_GROUP_COMMIT: usize = 128;

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

const INSTANCE_ROW_SELECT: &str = "SELECT i.sop_instance_uid, i.sop_class_uid, i.series_instance_uid, \
     i.study_instance_uid, i.transfer_syntax_uid, i.sha256, b.blob_key, b.original_size, b.stored_size \
     FROM instances i JOIN blobs b ON b.sha256 = i.sha256";

impl Catalog {
    /// Open the catalog at `url` (creating the SQLite file if needed) and
    /// bring its schema up to date.
    pub async fn open(url: &str) -> Result<Self, ArchiveError> {
        if !url.starts_with("sqlite:") {
            return Err(ArchiveError::Config(format!(
                "catalog URL {url:?}: only sqlite: catalogs are supported by this build"
            )));
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        let path = options.get_filename().to_owned();
        if options.get_filename().as_os_str() == ":memory:" || url.contains("mode=memory") {
            return Err(ArchiveError::Config(format!(
                "catalog URL {url:?}: the catalog must be a file (its writer and readers are \
                 separate connections)"
            )));
        }
        // Migrations on a connection of their own, closed before the
        // writer opens.
        let mut migrator = SqliteConnection::connect_with(&options).await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut migrator)
            .await?;
        migrator.close().await?;
        let writer = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || open_writer(&path))
                .await
                .map_err(|e| ArchiveError::CatalogWrite(format!("opening the writer: {e}")))??
        };
        // An in-process SQLite connection cannot go stale: no ping before
        // each use.
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(
                options
                    .clone()
                    .read_only(true)
                    .pragma("cache_size", READ_CACHE_KIB),
            )
            .await?;
        let (writes, queue) = mpsc::channel(4 * MAX_GROUP_COMMIT);
        let committed_seq = Arc::new(watch::Sender::new(0));
        let seq = Arc::clone(&committed_seq);
        std::thread::Builder::new()
            .name("catalog-writer".into())
            .spawn(move || writer_thread(path, writer, queue, seq))?;
        Ok(Catalog {
            writes,
            reader,
            committed_seq,
        })
    }

    /// The stored instance with this SOP Instance UID, if any.
    pub async fn instance(
        &self,
        sop_instance_uid: &str,
    ) -> Result<Option<InstanceRow>, ArchiveError> {
        let sql = format!("{INSTANCE_ROW_SELECT} WHERE i.sop_instance_uid = $1");
        Ok(sqlx::query_as::<_, InstanceRow>(&sql)
            .bind(sop_instance_uid)
            .fetch_optional(&self.reader)
            .await?)
    }

    /// One read before an ingest stores anything: is this SOP Instance UID
    /// already stored, and is this content already stored?
    pub async fn precheck(
        &self,
        sop_instance_uid: &str,
        sha256: &str,
    ) -> Result<Precheck, ArchiveError> {
        let row = sqlx::query(
            "SELECT (SELECT i.sha256 FROM instances i WHERE i.sop_instance_uid = $1), \
             (SELECT b.stored_size FROM instances i JOIN blobs b ON b.sha256 = i.sha256 WHERE i.sop_instance_uid = $1), \
             (SELECT stored_size FROM blobs WHERE sha256 = $2)",
        )
        .bind(sop_instance_uid)
        .bind(sha256)
        .fetch_one(&self.reader)
        .await?;
        let existing_sha: Option<String> = row.get(0);
        let existing_size: Option<i64> = row.get(1);
        let blob_size: Option<i64> = row.get(2);
        Ok(Precheck {
            existing: existing_sha.map(|sha| (sha, existing_size.unwrap_or(0) as u64)),
            blob_stored_size: blob_size.map(|s| s as u64),
        })
    }

    /// All instances, or those of one study, in a stable order.
    pub async fn instances(&self, study: Option<&str>) -> Result<Vec<InstanceRow>, ArchiveError> {
        let rows = match study {
            Some(study) => {
                let sql = format!(
                    "{INSTANCE_ROW_SELECT} WHERE i.study_instance_uid = $1 ORDER BY i.series_instance_uid, i.instance_number, i.sop_instance_uid"
                );
                sqlx::query_as::<_, InstanceRow>(&sql)
                    .bind(study)
                    .fetch_all(&self.reader)
                    .await?
            }
            None => {
                let sql = format!(
                    "{INSTANCE_ROW_SELECT} ORDER BY i.study_instance_uid, i.series_instance_uid, i.instance_number, i.sop_instance_uid"
                );
                sqlx::query_as::<_, InstanceRow>(&sql)
                    .fetch_all(&self.reader)
                    .await?
            }
        };
        Ok(rows)
    }

    /// The stored DICOM JSON metadata of an instance.
    pub async fn instance_metadata(
        &self,
        sop_instance_uid: &str,
    ) -> Result<Option<String>, ArchiveError> {
        Ok(sqlx::query_scalar::<_, String>(
            "SELECT metadata FROM instances WHERE sop_instance_uid = $1",
        )
        .bind(sop_instance_uid)
        .fetch_optional(&self.reader)
        .await?)
    }

    /// A receiver of the newest change seq committed by this process's
    /// writer: followers of the change feed wake on it instead of polling.
    /// (Changes written by other processes are seen only by polling.)
    pub fn watch_changes(&self) -> watch::Receiver<i64> {
        self.committed_seq.subscribe()
    }

    /// Change-feed entries after `after_seq`, oldest first.
    pub async fn changes_since(
        &self,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<Change>, ArchiveError> {
        Ok(sqlx::query_as::<_, Change>(
            "SELECT seq, kind, sop_instance_uid, series_instance_uid, study_instance_uid, report_id, \
             recorded_at FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Run a SELECT built by a query front end (the gateway's C-FIND) on
    /// the read-only connections, binding `binds` as text, and return at most
    /// `limit` rows with every column as text (NULL as `None`). Read-only by
    /// construction: the reader pool is opened with `read_only(true)`.
    pub async fn select_text_rows(
        &self,
        sql: &str,
        binds: &[String],
        limit: usize,
    ) -> Result<Vec<Vec<Option<String>>>, ArchiveError> {
        use futures::TryStreamExt;
        let mut query = sqlx::query(sql);
        for b in binds {
            query = query.bind(b.as_str());
        }
        let mut rows = query.fetch(&self.reader);
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(row) = rows.try_next().await? else {
                break;
            };
            let mut values = Vec::with_capacity(row.len());
            for i in 0..row.len() {
                values.push(row.try_get::<Option<String>, _>(i)?);
            }
            out.push(values);
        }
        Ok(out)
    }

    pub async fn stats(&self) -> Result<CatalogStats, ArchiveError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM patients), (SELECT COUNT(*) FROM studies), \
             (SELECT COUNT(*) FROM series), (SELECT COUNT(*) FROM instances), (SELECT COUNT(*) FROM blobs), \
             (SELECT COALESCE(SUM(b.original_size), 0) FROM instances i JOIN blobs b ON b.sha256 = i.sha256), \
             (SELECT COALESCE(SUM(stored_size), 0) FROM blobs)",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(CatalogStats {
            patients: row.get(0),
            studies: row.get(1),
            series: row.get(2),
            instances: row.get(3),
            blobs: row.get(4),
            original_bytes: row.get(5),
            stored_bytes: row.get(6),
        })
    }

    /// Record an instance whose blob is already durable in the object store,
    /// in one transaction: patient, study, series (created if new), blob,
    /// instance and a change-feed entry. With `replace`, an existing instance
    /// row with the same SOP Instance UID is pointed at the new blob.
    ///
    /// Records from concurrent ingests are group-committed by one writer
    /// task: one fsync for many instances, each answered only after the
    /// commit that made it durable.
    pub async fn record_instance(
        &self,
        attrs: &InstanceAttributes,
        blob: &BlobRecord,
        source: &IngestSource,
        metadata_json: &str,
        replace: bool,
    ) -> Result<RecordOutcome, ArchiveError> {
        self.record_instance_with_report(attrs, blob, source, metadata_json, None, replace)
            .await
    }

    /// [`Catalog::record_instance`] of an instance that holds a report
    /// (SR, Encapsulated PDF): the report is recorded in the same
    /// transaction, and updated when the instance is replaced.
    pub async fn record_instance_with_report(
        &self,
        attrs: &InstanceAttributes,
        blob: &BlobRecord,
        source: &IngestSource,
        metadata_json: &str,
        document: Option<&ReportDocument>,
        replace: bool,
    ) -> Result<RecordOutcome, ArchiveError> {
        let (reply, answer) = oneshot::channel();
        let pending = PendingWrite::Instance(Box::new(PendingRecord {
            attrs: attrs.clone(),
            blob: blob.clone(),
            source: source.to_string(),
            metadata_json: metadata_json.to_owned(),
            document: document.cloned(),
            replace,
            reply,
        }));
        self.queue_write(pending, answer).await
    }

    /// Queue a write for the writer thread and wait for its answer.
    async fn queue_write<T>(
        &self,
        pending: PendingWrite,
        answer: oneshot::Receiver<Result<T, ArchiveError>>,
    ) -> Result<T, ArchiveError> {
        let gone = || ArchiveError::CatalogWrite("the catalog writer has stopped".into());
        self.writes.send(pending).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Run `write` on the writer's connection, between group commits, and
    /// wait for its answer. It opens its own transaction if it needs one.
    pub(crate) async fn write_job<T, F>(&self, write: F) -> Result<T, ArchiveError>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteConn) -> Result<T, ArchiveError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = move |conn: &mut WriteConn| {
            let _ = reply.send(write(conn));
        };
        self.queue_write(PendingWrite::Job(Box::new(job)), answer)
            .await
    }
}

/// Write one record inside the writer's transaction.
fn record_in_tx(
    tx: &WriteConn,
    rec: &PendingRecord,
    group: &mut GroupTx,
) -> Result<RecordOutcome, ArchiveError> {
    if let Some(begin) = group.open() {
        tx.execute_batch(begin)?;
    }
    let mut existing: Option<(String, i64)> = None;
    run_numbered(
        tx,
        "SELECT i.sha256, b.stored_size FROM instances i JOIN blobs b ON b.sha256 = i.sha256 \
         WHERE i.sop_instance_uid = $1",
        &[&rec.attrs.sop_instance_uid],
        |r| {
            existing = Some((r.get(0)?, r.get(1)?));
            Ok(())
        },
    )?;
    if let Some((sha, stored_size)) = &existing
        && (*sha == rec.blob.sha256 || !rec.replace)
    {
        return Ok(RecordOutcome::AlreadyPresent {
            sha256: sha.clone(),
            stored_size: *stored_size as u64,
        });
    }
    let now = now_rfc3339();
    let a = &rec.attrs;
    let kind = if existing.is_some() {
        "instance-replaced"
    } else {
        "instance-stored"
    };
    // Patient (inserted if new, then its id), study and series if new, blob
    // if new, the instance (one upsert: reached only for a new instance or
    // an allowed replacement) and its change-feed entry.
    let patient_pk = record_patient(tx, &PatientRow::from(a), &now)?;
    let new_study = !query_numbered::<i64>(
        tx,
        "INSERT INTO studies (study_instance_uid, patient_pk, study_date, study_time, \
         accession_number, study_id, study_description, referring_physician_name, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (study_instance_uid) DO NOTHING RETURNING 1",
        &[
            &a.study_instance_uid,
            &patient_pk,
            &a.study_date,
            &a.study_time,
            &a.accession_number,
            &a.study_id,
            &a.study_description,
            &a.referring_physician_name,
            &now,
        ],
    )?
    .is_empty();
    execute_numbered(
        tx,
        "INSERT INTO series (series_instance_uid, study_instance_uid, modality, series_number, \
         series_description, body_part_examined, series_date, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (series_instance_uid) DO NOTHING",
        &[
            &a.series_instance_uid,
            &a.study_instance_uid,
            &a.modality,
            &a.series_number,
            &a.series_description,
            &a.body_part_examined,
            &a.series_date,
            &now,
        ],
    )?;
    let blob_inserted = !query_numbered::<i64>(
        tx,
        "INSERT INTO blobs (sha256, blob_key, compression, original_size, stored_size, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sha256) DO NOTHING RETURNING 1",
        &[
            &rec.blob.sha256,
            &rec.blob.blob_key,
            &rec.blob.compression,
            &(rec.blob.original_size as i64),
            &(rec.blob.stored_size as i64),
            &now,
        ],
    )?
    .is_empty();
    execute_numbered(
        tx,
        "INSERT INTO instances (sop_instance_uid, series_instance_uid, study_instance_uid, \
         sop_class_uid, instance_number, content_date, num_rows, num_columns, number_of_frames, \
         transfer_syntax_uid, specific_character_set, sha256, received_at, source, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
         ON CONFLICT (sop_instance_uid) DO UPDATE SET series_instance_uid = excluded.series_instance_uid, \
         study_instance_uid = excluded.study_instance_uid, sop_class_uid = excluded.sop_class_uid, \
         instance_number = excluded.instance_number, content_date = excluded.content_date, \
         num_rows = excluded.num_rows, num_columns = excluded.num_columns, \
         number_of_frames = excluded.number_of_frames, transfer_syntax_uid = excluded.transfer_syntax_uid, \
         specific_character_set = excluded.specific_character_set, sha256 = excluded.sha256, \
         received_at = excluded.received_at, source = excluded.source, metadata = excluded.metadata",
        &[
            &a.sop_instance_uid,
            &a.series_instance_uid,
            &a.study_instance_uid,
            &a.sop_class_uid,
            &a.instance_number,
            &a.content_date,
            &a.rows,
            &a.columns,
            &a.number_of_frames,
            &a.transfer_syntax_uid,
            &a.specific_character_set,
            &rec.blob.sha256,
            &now,
            &rec.source,
            &rec.metadata_json,
        ],
    )?;
    let mut seq: i64 = query_one(
        tx,
        "INSERT INTO changes (kind, sop_instance_uid, series_instance_uid, study_instance_uid, \
         recorded_at) VALUES ($1, $2, $3, $4, $5) RETURNING seq",
        &[
            &kind,
            &a.sop_instance_uid,
            &a.series_instance_uid,
            &a.study_instance_uid,
            &now,
        ],
        "the seq of a change",
    )?;
    // A report that arrived before its images is linked when they come.
    if new_study && let (Some(accession), Some(patient_id)) = (&a.accession_number, &a.patient_id) {
        let linked: Vec<i64> = query_numbered(
            tx,
            "UPDATE reports SET study_instance_uid = $1 WHERE study_instance_uid IS NULL \
             AND accession_number = $2 \
             AND patient_pk IN (SELECT id FROM patients WHERE patient_id = $3) RETURNING id",
            &[&a.study_instance_uid, accession, patient_id],
        )?;
        for report_id in linked {
            let linked_seq = append_report_change(
                tx,
                "report-linked",
                report_id,
                Some(&a.study_instance_uid),
                &now,
            )?;
            seq = seq.max(linked_seq);
        }
    }
    // Only an SR or PDF with a readable report, or a replaced instance
    // (whose report may have to change), can have a report to record.
    if (rec.document.is_some() || existing.is_some())
        && let Some(report_seq) = documents::record_document(
            tx,
            patient_pk,
            a,
            &rec.blob,
            &rec.source,
            rec.document.as_ref(),
            &now,
        )?
    {
        seq = seq.max(report_seq);
    }
    let stored_size = if blob_inserted {
        rec.blob.stored_size as i64
    } else {
        query_one::<i64>(
            tx,
            "SELECT stored_size FROM blobs WHERE sha256 = $1",
            &[&rec.blob.sha256],
            "the stored size of the blob",
        )?
    };
    Ok(RecordOutcome::Recorded {
        seq,
        stored_size: stored_size as u64,
        replaced: existing.is_some(),
    })
}

/// Run one statement whose `$n` placeholders are `args[n - 1]`; `row`
/// reads each row it returns.
pub(crate) fn run_numbered(
    conn: &WriteConn,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
    mut row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<()>,
) -> Result<(), ArchiveError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let numbers = placeholder_numbers(sql);
    if numbers.len() != stmt.parameter_count() {
        return Err(ArchiveError::CatalogWrite(format!(
            "statement has {} parameters, {} placeholders were found: {sql}",
            stmt.parameter_count(),
            numbers.len()
        )));
    }
    for (i, n) in numbers.into_iter().enumerate() {
        let Some(arg) = n.checked_sub(1).and_then(|n| args.get(n)) else {
            return Err(ArchiveError::CatalogWrite(format!(
                "placeholder ${n} has no value: {sql}"
            )));
        };
        stmt.raw_bind_parameter(i + 1, arg)?;
    }
    let mut rows = stmt.raw_query();
    while let Some(r) = rows.next()? {
        row(r)?;
    }
    Ok(())
}

/// The numbers of the `$n` placeholders of `sql`, each once, in order of
/// first appearance: SQLite's parameter indexes (it numbers named
/// parameters by first appearance, not by `n`). Asking SQLite for each
/// parameter's name instead costs a scan of the name list per parameter,
/// which adds up for a multi-row insert. The catalog's SQL has no `$` in
/// string literals.
fn placeholder_numbers(sql: &str) -> Vec<usize> {
    let bytes = sql.as_bytes();
    let mut numbers: Vec<usize> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            let start = i + 1;
            let mut end = start;
            while end < bytes.len() && bytes[end].is_ascii_digit() {
                end += 1;
            }
            if let Ok(n) = sql[start..end].parse::<usize>()
                && seen.insert(n)
            {
                numbers.push(n);
            }
            i = end;
        } else {
            i += 1;
        }
    }
    numbers
}

/// [`run_numbered`] for a statement whose rows (if any) are not wanted;
/// the number of rows it changed.
pub(crate) fn execute_numbered(
    conn: &WriteConn,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<u64, ArchiveError> {
    run_numbered(conn, sql, args, |_| Ok(()))?;
    Ok(conn.changes())
}

/// [`run_numbered`] for the first column of the one row it must return
/// (`what` names it in the error otherwise).
pub(crate) fn query_one<T: rusqlite::types::FromSql>(
    conn: &WriteConn,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
    what: &str,
) -> Result<T, ArchiveError> {
    query_numbered(conn, sql, args)?
        .into_iter()
        .next()
        .ok_or_else(|| ArchiveError::CatalogWrite(format!("no row for {what}")))
}

/// [`run_numbered`] for the rows' first columns.
pub(crate) fn query_numbered<T: rusqlite::types::FromSql>(
    conn: &WriteConn,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<T>, ArchiveError> {
    let mut out = Vec::new();
    run_numbered(conn, sql, args, |r| {
        out.push(r.get(0)?);
        Ok(())
    })?;
    Ok(out)
}

/// Insert a patient if new; its id, new or not. (An upsert with a no-op
/// update, to get RETURNING for an existing row, would rewrite that row
/// and its key's index entry: pages the commit then has to write.)
pub(crate) fn record_patient(
    tx: &WriteConn,
    p: &PatientRow<'_>,
    now: &str,
) -> Result<i64, ArchiveError> {
    execute_numbered(
        tx,
        "INSERT INTO patients (patient_key, patient_id, issuer_of_patient_id, patient_name, \
         birth_date, sex, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (patient_key) DO NOTHING",
        &[
            &p.key,
            &p.id,
            &p.issuer,
            &p.name,
            &p.birth_date,
            &p.sex,
            &now,
        ],
    )?;
    query_one(
        tx,
        "SELECT id FROM patients WHERE patient_key = $1",
        &[&p.key],
        "a patient",
    )
}

/// Append a report's entry to the change feed; its seq.
pub(crate) fn append_report_change(
    tx: &WriteConn,
    kind: &str,
    report_id: i64,
    study_instance_uid: Option<&str>,
    now: &str,
) -> Result<i64, ArchiveError> {
    query_one(
        tx,
        "INSERT INTO changes (kind, report_id, study_instance_uid, recorded_at) \
         VALUES ($1, $2, $3, $4) RETURNING seq",
        &[&kind, &report_id, &study_instance_uid, &now],
        "the seq of a change",
    )
}

/// The patient columns of a row to upsert.
pub(crate) struct PatientRow<'a> {
    pub key: String,
    pub id: Option<&'a str>,
    pub issuer: Option<&'a str>,
    pub name: Option<&'a str>,
    pub birth_date: Option<&'a str>,
    pub sex: Option<&'a str>,
}

impl<'a> From<&'a InstanceAttributes> for PatientRow<'a> {
    fn from(a: &'a InstanceAttributes) -> Self {
        PatientRow {
            key: a.patient_key(),
            id: a.patient_id.as_deref(),
            issuer: a.issuer_of_patient_id.as_deref(),
            name: a.patient_name.as_deref(),
            birth_date: a.patient_birth_date.as_deref(),
            sex: a.patient_sex.as_deref(),
        }
    }
}

fn notify_committed(committed_seq: &watch::Sender<i64>, newest: i64) {
    committed_seq.send_if_modified(|seq| {
        let newer = newest > *seq;
        if newer {
            *seq = newest;
        }
        newer
    });
}

/// Page cache of the writer and of each reader (`cache_size`; negative:
/// KiB).
const WRITE_CACHE_KIB: &str = "-32768";
const READ_CACHE_KIB: &str = "-16384";
/// Prepared statements kept by the writer: every statement it runs has
/// fixed text, a few dozen in all.
const WRITE_STATEMENT_CACHE: usize = 128;

/// Open the writer's connection: WAL, `synchronous=FULL` (a commit is
/// durable when it returns), foreign keys, and a long busy timeout for the
/// rare outside writer (`pacs verify --repair`, a second process).
fn open_writer(path: &std::path::Path) -> Result<WriteConn, ArchiveError> {
    use rusqlite::OpenFlags;
    let conn = WriteConn::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
         PRAGMA cache_size = {WRITE_CACHE_KIB};"
    ))?;
    conn.set_prepared_statement_cache_capacity(WRITE_STATEMENT_CACHE);
    Ok(conn)
}

/// The one writer of the catalog, on a thread of its own: takes whatever
/// records are queued (up to `MAX_GROUP_COMMIT`), writes them in one
/// transaction, commits once, and only then answers each ingest. Jobs run
/// alone, in queue order between groups.
fn writer_thread(
    path: PathBuf,
    mut conn: WriteConn,
    mut queue: mpsc::Receiver<PendingWrite>,
    committed_seq: Arc<watch::Sender<i64>>,
) {
    let mut queued = Vec::with_capacity(MAX_GROUP_COMMIT);
    let mut batch = Vec::with_capacity(MAX_GROUP_COMMIT);
    while let Some(first) = queue.blocking_recv() {
        queued.push(first);
        while queued.len() < MAX_GROUP_COMMIT {
            match queue.try_recv() {
                Ok(next) => queued.push(next),
                Err(_) => break,
            }
        }
        for pending in queued.drain(..) {
            match pending {
                PendingWrite::Job(job) => {
                    write_group(&path, &mut conn, &mut batch, &committed_seq);
                    job(&mut conn);
                }
                record => batch.push(record),
            }
        }
        write_group(&path, &mut conn, &mut batch, &committed_seq);
    }
}

/// Commit `batch` as one group and answer each of its writes.
fn write_group(
    path: &std::path::Path,
    conn: &mut WriteConn,
    batch: &mut Vec<PendingWrite>,
    committed_seq: &watch::Sender<i64>,
) {
    if batch.is_empty() {
        return;
    }
    let group = commit_group(conn, batch);
    if matches!(group, Err(WriterError::Broken(_))) {
        // Replace a connection left inside a transaction it cannot roll
        // back (the failed group is answered below).
        match open_writer(path) {
            Ok(fresh) => *conn = fresh,
            Err(e) => tracing::error!(error = %e, "cannot reopen the catalog connection"),
        }
    }
    match group.map_err(ArchiveError::from) {
        Ok(outcomes) => {
            let newest = outcomes
                .iter()
                .filter_map(|o| o.as_ref().ok().and_then(Written::seq))
                .max();
            if let Some(newest) = newest {
                notify_committed(committed_seq, newest);
            }
            for (pending, outcome) in batch.drain(..).zip(outcomes) {
                pending.answer(outcome);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, records = batch.len(), "catalog group commit failed");
            let message = e.to_string();
            for pending in batch.drain(..) {
                pending.answer(Err(ArchiveError::CatalogWrite(message.clone())));
            }
        }
    }
}

fn commit_group(
    conn: &WriteConn,
    batch: &[PendingWrite],
) -> Result<Vec<Result<Written, ArchiveError>>, WriterError> {
    // Fast path: the whole group in one transaction, opened by the first
    // statement of the first write.
    let mut group = GroupTx::new();
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut failed = false;
    for pending in batch {
        match pending.write(conn, &mut group) {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => {
                tracing::warn!(error = %e, write = %pending.describe(), "record failed; retrying the group one by one");
                failed = true;
                break;
            }
        }
    }
    if !failed {
        finish(conn, &group, true)?;
        return Ok(outcomes.into_iter().map(Ok).collect());
    }
    finish(conn, &group, false)?;
    // Slow path: one transaction per write, so one bad write fails alone.
    let mut results = Vec::with_capacity(batch.len());
    for pending in batch {
        let mut group = GroupTx::new();
        match pending.write(conn, &mut group) {
            Ok(outcome) => {
                finish(conn, &group, true)?;
                results.push(Ok(outcome));
            }
            Err(e) => {
                finish(conn, &group, false)?;
                results.push(Err(e));
            }
        }
    }
    Ok(results)
}

/// Where a group's transaction stands, threaded through its writes.
pub(super) struct GroupTx {
    /// Still to be opened: the first statement of the group is `BEGIN`.
    begin: bool,
}

impl GroupTx {
    fn new() -> Self {
        GroupTx { begin: true }
    }

    /// `BEGIN` for the first write of the group, once.
    pub(super) fn open(&mut self) -> Option<&'static str> {
        std::mem::take(&mut self.begin).then_some("BEGIN")
    }
}

/// Why a group failed as a whole.
#[derive(Debug)]
enum WriterError {
    /// A statement failed; the connection is usable.
    Failed(ArchiveError),
    /// The connection is inside a transaction it could not roll back: it
    /// must be replaced.
    Broken(ArchiveError),
}

impl From<ArchiveError> for WriterError {
    fn from(e: ArchiveError) -> Self {
        WriterError::Failed(e)
    }
}

impl From<WriterError> for ArchiveError {
    fn from(e: WriterError) -> Self {
        match e {
            WriterError::Failed(e) | WriterError::Broken(e) => e,
        }
    }
}

/// End the transaction a group opened (its first statement ran) with
/// `COMMIT`, or `ROLLBACK` when not `commit`. A failed
/// `COMMIT` is rolled back. A failed rollback means the connection must be
/// replaced (after a failure inside `BEGIN` itself, or after a write that
/// committed and then failed a check, there is no transaction to roll back,
/// which is fine).
fn finish(conn: &WriteConn, group: &GroupTx, commit: bool) -> Result<(), WriterError> {
    if group.begin {
        return Ok(());
    }
    let committed = if commit {
        conn.execute_batch("COMMIT")
    } else {
        Ok(())
    };
    if (!commit || committed.is_err())
        && let Err(e) = conn.execute_batch("ROLLBACK")
        && !e.to_string().contains("no transaction is active")
    {
        let e = ArchiveError::from(e);
        return Err(WriterError::Broken(match committed {
            Err(c) => ArchiveError::from(c),
            Ok(()) => e,
        }));
    }
    Ok(committed.map_err(ArchiveError::from)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_by_first_appearance() {
        assert_eq!(
            placeholder_numbers("UPDATE t SET a = $7 WHERE b = $2 AND c = $7 OR d = $10"),
            vec![7, 2, 10]
        );
        assert!(placeholder_numbers("SELECT 1").is_empty());
    }

    #[test]
    fn each_placeholder_is_bound_to_its_own_value() {
        let conn = WriteConn::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER, c TEXT)")
            .unwrap();
        let (a, b, c) = ("first", 42_i64, None::<String>);
        let args: [&dyn rusqlite::ToSql; 3] = [&a, &b, &c];
        // Used out of order and twice: SQLite numbers them 1, 2, 3 by
        // appearance.
        let ids: Vec<i64> = query_numbered(
            &conn,
            "INSERT INTO t (c, b, a) VALUES ($3, $2, $1) RETURNING id",
            &args,
        )
        .unwrap();
        assert_eq!(ids, vec![1]);
        execute_numbered(&conn, "INSERT INTO t (a, b, c) VALUES ($2, $2, $1)", &args).unwrap();
        let n: i64 = query_one(
            &conn,
            "SELECT count(*) FROM t WHERE a = $1 OR c = $1",
            &args,
            "the count",
        )
        .unwrap();
        assert_eq!(n, 2);
        let stored: Vec<(Option<String>, i64, Option<String>)> = conn
            .prepare("SELECT a, b, c FROM t ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            stored,
            vec![
                (Some("first".into()), 42, None),
                (Some("42".into()), 42, Some("first".into()))
            ]
        );
    }

    #[test]
    fn a_dollar_sign_that_is_not_a_placeholder_is_an_error_not_a_wrong_binding() {
        let conn = WriteConn::open_in_memory().unwrap();
        let err = run_numbered(&conn, "SELECT '$2', $1", &[&1_i64], |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("placeholders"), "{err}");
        let err = run_numbered(&conn, "SELECT $2", &[&1_i64], |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("no value"), "{err}");
    }
}
