//! The SQL catalog: patients, studies, series, instances, blobs and the
//! change feed, through sqlx.
//!
//! SQLite in WAL mode with `synchronous=FULL` is the embedded default: a
//! committed transaction survives power loss. Writes go through exactly
//! one connection, held by the writer task between group commits and
//! borrowed by the few other writers (SQLite has one writer; queueing for
//! the connection is cheaper than lock retries, and a pool would ping it
//! twice per use), reads through their own pool. Queries use
//! `$n` placeholders and portable SQL (`ON CONFLICT`, `RETURNING`) so a
//! PostgreSQL backend needs only its own migration folder.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Arguments as _, Connection as _, Row, Sqlite, SqliteConnection};
use tokio::sync::{Mutex, mpsc, oneshot, watch};

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
    writes: mpsc::Sender<PendingWrite>,
    /// The one writing connection, shared with the writer task (the
    /// message mover and small administrative writes such as API tokens
    /// queue on it).
    writer: Arc<Mutex<SqliteConnection>>,
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

/// An instance waiting for the writer task's next group commit.
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

/// A write waiting for the writer task's next group commit.
enum PendingWrite {
    Instance(Box<PendingRecord>),
    Message(Box<results::PendingMessage>),
}

impl PendingWrite {
    /// Write it inside the group's transaction (see [`GroupTx`]).
    async fn write(
        &self,
        tx: &mut SqliteConnection,
        group: &mut GroupTx,
    ) -> Result<Written, ArchiveError> {
        Ok(match self {
            PendingWrite::Instance(rec) => {
                Written::Instance(record_in_tx(tx, rec, &mut group.begin).await?)
            }
            PendingWrite::Message(m) => {
                Written::Message(results::record_message_in_tx(tx, m, group).await?)
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
        let mut writer = SqliteConnection::connect_with(&options).await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut writer)
            .await?;
        let writer = Arc::new(Mutex::new(writer));
        // An in-process SQLite connection cannot go stale: no ping before
        // each use.
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options.clone().read_only(true))
            .await?;
        let (writes, queue) = mpsc::channel(4 * MAX_GROUP_COMMIT);
        let committed_seq = Arc::new(watch::Sender::new(0));
        tokio::spawn(writer_task(
            Arc::clone(&writer),
            options,
            queue,
            Arc::clone(&committed_seq),
        ));
        Ok(Catalog {
            writes,
            writer,
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

    /// Queue a write for the writer task and wait for its answer.
    async fn queue_write<T>(
        &self,
        pending: PendingWrite,
        answer: oneshot::Receiver<Result<T, ArchiveError>>,
    ) -> Result<T, ArchiveError> {
        let gone = || ArchiveError::CatalogWrite("the catalog writer has stopped".into());
        self.writes.send(pending).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Write one record inside the writer's transaction (in its own savepoint).
async fn record_in_tx(
    tx: &mut SqliteConnection,
    rec: &PendingRecord,
    begin: &mut bool,
) -> Result<RecordOutcome, ArchiveError> {
    let existing = sqlx::query(&format!(
        "{}SELECT i.sha256, b.stored_size FROM instances i JOIN blobs b ON b.sha256 = i.sha256 \
         WHERE i.sop_instance_uid = $1",
        begin_first(begin)
    ))
    .bind(&rec.attrs.sop_instance_uid)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = &existing {
        let sha: String = row.get(0);
        if sha == rec.blob.sha256 || !rec.replace {
            return Ok(RecordOutcome::AlreadyPresent {
                sha256: sha,
                stored_size: row.get::<i64, _>(1) as u64,
            });
        }
    }
    let now = now_rfc3339();
    let a = &rec.attrs;
    let kind = if existing.is_some() {
        "instance-replaced"
    } else {
        "instance-stored"
    };
    // One round trip: patient (inserted if new, then its id selected),
    // study and series if new, blob if new, the instance (one upsert:
    // reached only for a new instance or an allowed replacement) and its
    // change-feed entry. Rows are tagged, since a conflicting insert returns
    // none.
    let mut script = Script::default();
    let now_param = script.bind(now.as_str());
    let (key, _) = push_patient(
        &mut script,
        PatientRow::from(a),
        &now_param,
        Some("'patient', id"),
    );
    let study = script.bind(&a.study_instance_uid);
    let p = [
        study.clone(),
        format!("(SELECT id FROM patients WHERE patient_key = {key})"),
        script.bind(&a.study_date),
        script.bind(&a.study_time),
        script.bind(&a.accession_number),
        script.bind(&a.study_id),
        script.bind(&a.study_description),
        script.bind(&a.referring_physician_name),
        now_param.clone(),
    ]
    .join(", ");
    script.push(&format!(
        "INSERT INTO studies (study_instance_uid, patient_pk, study_date, study_time, accession_number, \
         study_id, study_description, referring_physician_name, created_at) VALUES ({p}) \
         ON CONFLICT (study_instance_uid) DO NOTHING RETURNING 'study', 0"
    ));
    let series = script.bind(&a.series_instance_uid);
    let p = [
        series.clone(),
        study.clone(),
        script.bind(&a.modality),
        script.bind(a.series_number),
        script.bind(&a.series_description),
        script.bind(&a.body_part_examined),
        script.bind(&a.series_date),
        now_param.clone(),
    ]
    .join(", ");
    script.push(&format!(
        "INSERT INTO series (series_instance_uid, study_instance_uid, modality, series_number, \
         series_description, body_part_examined, series_date, created_at) VALUES ({p}) \
         ON CONFLICT (series_instance_uid) DO NOTHING"
    ));
    let sha = script.bind(&rec.blob.sha256);
    let p = [
        sha.clone(),
        script.bind(&rec.blob.blob_key),
        script.bind(rec.blob.compression),
        script.bind(rec.blob.original_size as i64),
        script.bind(rec.blob.stored_size as i64),
        now_param.clone(),
    ]
    .join(", ");
    script.push(&format!(
        "INSERT INTO blobs (sha256, blob_key, compression, original_size, stored_size, created_at) \
         VALUES ({p}) ON CONFLICT (sha256) DO NOTHING RETURNING 'blob', 0"
    ));
    let sop = script.bind(&a.sop_instance_uid);
    let p = [
        sop.clone(),
        series.clone(),
        study.clone(),
        script.bind(&a.sop_class_uid),
        script.bind(a.instance_number),
        script.bind(&a.content_date),
        script.bind(a.rows),
        script.bind(a.columns),
        script.bind(a.number_of_frames),
        script.bind(&a.transfer_syntax_uid),
        script.bind(&a.specific_character_set),
        sha,
        now_param.clone(),
        script.bind(rec.source.as_str()),
        script.bind(rec.metadata_json.as_str()),
    ]
    .join(", ");
    script.push(&format!(
        "INSERT INTO instances (sop_instance_uid, series_instance_uid, study_instance_uid, sop_class_uid, \
         instance_number, content_date, num_rows, num_columns, number_of_frames, transfer_syntax_uid, \
         specific_character_set, sha256, received_at, source, metadata) VALUES ({p}) \
         ON CONFLICT (sop_instance_uid) DO UPDATE SET series_instance_uid = excluded.series_instance_uid, \
         study_instance_uid = excluded.study_instance_uid, sop_class_uid = excluded.sop_class_uid, \
         instance_number = excluded.instance_number, content_date = excluded.content_date, \
         num_rows = excluded.num_rows, num_columns = excluded.num_columns, \
         number_of_frames = excluded.number_of_frames, transfer_syntax_uid = excluded.transfer_syntax_uid, \
         specific_character_set = excluded.specific_character_set, sha256 = excluded.sha256, \
         received_at = excluded.received_at, source = excluded.source, metadata = excluded.metadata"
    ));
    let kind = script.bind(kind);
    script.push(&format!(
        "INSERT INTO changes (kind, sop_instance_uid, series_instance_uid, study_instance_uid, recorded_at) \
         VALUES ({kind}, {sop}, {series}, {study}, {now_param}) RETURNING 'seq', seq"
    ));
    let (sql, args) = script.into_parts()?;
    let rows: Vec<(String, i64)> = sqlx::query_as_with(&sql, args).fetch_all(&mut *tx).await?;
    let tagged = |tag: &str| rows.iter().find(|(t, _)| t == tag).map(|(_, v)| *v);
    let (Some(patient_pk), Some(mut seq)) = (tagged("patient"), tagged("seq")) else {
        return Err(ArchiveError::CatalogWrite(format!(
            "recording instance {} returned no patient or change",
            a.sop_instance_uid
        )));
    };
    let new_study = tagged("study").is_some();
    let blob_inserted = tagged("blob").is_some();
    // A report that arrived before its images is linked when they come.
    if new_study && let (Some(accession), Some(patient_id)) = (&a.accession_number, &a.patient_id) {
        let linked: Vec<i64> = sqlx::query_scalar(
            "UPDATE reports SET study_instance_uid = $1 WHERE study_instance_uid IS NULL \
             AND accession_number = $2 \
             AND patient_pk IN (SELECT id FROM patients WHERE patient_id = $3) RETURNING id",
        )
        .bind(&a.study_instance_uid)
        .bind(accession)
        .bind(patient_id)
        .fetch_all(&mut *tx)
        .await?;
        for report_id in linked {
            let linked_seq = append_report_change(
                tx,
                "report-linked",
                report_id,
                Some(&a.study_instance_uid),
                &now,
            )
            .await?;
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
        )
        .await?
    {
        seq = seq.max(report_seq);
    }
    let stored_size = if blob_inserted {
        rec.blob.stored_size as i64
    } else {
        sqlx::query_scalar("SELECT stored_size FROM blobs WHERE sha256 = $1")
            .bind(&rec.blob.sha256)
            .fetch_one(&mut *tx)
            .await?
    };
    Ok(RecordOutcome::Recorded {
        seq,
        stored_size: stored_size as u64,
        replaced: existing.is_some(),
    })
}

/// Several SQL statements sent to the connection as one query: sqlx runs
/// them one after another on the connection's thread, binding `$n` from one
/// shared argument list, and returns the rows of every `RETURNING` in
/// order. One round trip to that thread costs ~45 us on a 2-core machine;
/// a statement inside a script ~5 us. The writer builds each record as one
/// or two scripts instead of a statement per row.
#[derive(Default)]
pub(crate) struct Script<'q> {
    sql: String,
    args: SqliteArguments<'q>,
    count: usize,
    error: Option<String>,
}

impl<'q> Script<'q> {
    /// Add a value to the arguments; its placeholder (`$n`), to use in any
    /// later statement, as often as needed.
    pub fn bind<T>(&mut self, value: T) -> String
    where
        T: 'q + sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite>,
    {
        if let Err(e) = self.args.add(value) {
            self.error.get_or_insert_with(|| e.to_string());
        }
        self.count += 1;
        format!("${}", self.count)
    }

    /// Add SQL as is (e.g. `BEGIN;\n`).
    pub fn push_raw(&mut self, sql: &str) {
        self.sql.push_str(sql);
    }

    pub fn push(&mut self, statement: &str) {
        self.sql.push_str(statement);
        self.sql.push_str(";\n");
    }

    /// The SQL and its arguments, to run with `sqlx::query_with` and kin.
    pub fn into_parts(self) -> Result<(String, SqliteArguments<'q>), ArchiveError> {
        match self.error {
            Some(e) => Err(ArchiveError::CatalogWrite(format!(
                "cannot bind a value: {e}"
            ))),
            None => Ok((self.sql, self.args)),
        }
    }
}

/// Add the insert of a patient (if new) to `script`, then, if `returning`
/// is given, a select that gives it for the row, new or not; returns the
/// placeholders of its key and of its Patient ID.
pub(crate) fn push_patient<'q>(
    script: &mut Script<'q>,
    patient: PatientRow<'q>,
    now: &str,
    returning: Option<&str>,
) -> (String, String) {
    let key = script.bind(patient.key);
    let id = script.bind(patient.id);
    let p = [
        key.clone(),
        id.clone(),
        script.bind(patient.issuer),
        script.bind(patient.name),
        script.bind(patient.birth_date),
        script.bind(patient.sex),
        now.to_owned(),
    ]
    .join(", ");
    // Then read it: an upsert whose no-op update made RETURNING give the id
    // of an existing row rewrote that row and its key's index entry, pages
    // that the commit then had to write.
    script.push(&format!(
        "INSERT INTO patients (patient_key, patient_id, issuer_of_patient_id, patient_name, \
         birth_date, sex, created_at) VALUES ({p}) ON CONFLICT (patient_key) DO NOTHING"
    ));
    if let Some(returning) = returning {
        script.push(&format!(
            "SELECT {returning} FROM patients WHERE patient_key = {key}"
        ));
    }
    (key, id)
}

/// Append a report's entry to the change feed; its seq.
pub(crate) async fn append_report_change(
    tx: &mut SqliteConnection,
    kind: &str,
    report_id: i64,
    study_instance_uid: Option<&str>,
    now: &str,
) -> Result<i64, ArchiveError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO changes (kind, report_id, study_instance_uid, recorded_at) \
         VALUES ($1, $2, $3, $4) RETURNING seq",
    )
    .bind(kind)
    .bind(report_id)
    .bind(study_instance_uid)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?)
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

/// The one writer of the catalog: takes whatever records are queued (up to
/// `MAX_GROUP_COMMIT`), writes each in its own savepoint, commits once, and
/// only then answers each ingest.
async fn writer_task(
    writer: Arc<Mutex<SqliteConnection>>,
    options: SqliteConnectOptions,
    mut queue: mpsc::Receiver<PendingWrite>,
    committed_seq: Arc<watch::Sender<i64>>,
) {
    let mut batch = Vec::with_capacity(MAX_GROUP_COMMIT);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_GROUP_COMMIT {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut conn = writer.lock().await;
        let group = commit_group(&mut conn, &batch).await;
        if matches!(group, Err(WriterError::Broken(_))) {
            // Replace a connection left inside a transaction it cannot
            // roll back (the failed group is answered below).
            match SqliteConnection::connect_with(&options).await {
                Ok(fresh) => *conn = fresh,
                Err(e) => tracing::error!(error = %e, "cannot reopen the catalog connection"),
            }
        }
        drop(conn);
        match group.map_err(ArchiveError::from) {
            Ok(outcomes) => {
                let newest = outcomes
                    .iter()
                    .filter_map(|o| o.as_ref().ok().and_then(Written::seq))
                    .max();
                if let Some(newest) = newest {
                    notify_committed(&committed_seq, newest);
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
}

async fn commit_group(
    conn: &mut SqliteConnection,
    batch: &[PendingWrite],
) -> Result<Vec<Result<Written, ArchiveError>>, WriterError> {
    // Fast path: the whole group in one transaction, opened by the first
    // query of the first write and, when it can, committed by the last query
    // of the last write (two round trips less per group).
    let mut group = GroupTx::new();
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut failed = false;
    for (i, pending) in batch.iter().enumerate() {
        group.may_commit = i + 1 == batch.len();
        match pending.write(conn, &mut group).await {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => {
                tracing::warn!(error = %e, write = %pending.describe(), "record failed; retrying the group one by one");
                failed = true;
                break;
            }
        }
    }
    if !failed {
        finish(conn, &group, true).await?;
        return Ok(outcomes.into_iter().map(Ok).collect());
    }
    finish(conn, &group, false).await?;
    // Slow path: one transaction per write, so one bad write fails alone.
    let mut results = Vec::with_capacity(batch.len());
    for pending in batch {
        let mut group = GroupTx::new();
        group.may_commit = true;
        match pending.write(conn, &mut group).await {
            Ok(outcome) => {
                finish(conn, &group, true).await?;
                results.push(Ok(outcome));
            }
            Err(e) => {
                finish(conn, &group, false).await?;
                results.push(Err(e));
            }
        }
    }
    Ok(results)
}

/// Where a group's transaction stands, threaded through its writes.
pub(super) struct GroupTx {
    /// Still to be opened: the first query of the group starts with `BEGIN`.
    begin: bool,
    /// The current write is the group's last: its final query may end with
    /// `COMMIT`.
    may_commit: bool,
    /// A query ending with `COMMIT` succeeded: the group is durable.
    committed: bool,
}

impl GroupTx {
    fn new() -> Self {
        GroupTx {
            begin: true,
            may_commit: false,
            committed: false,
        }
    }

    /// `BEGIN` for the first query of the group, once.
    pub(super) fn open(&mut self) -> &'static str {
        begin_first(&mut self.begin)
    }

    /// `COMMIT` for the final query of a write, when that write is the
    /// group's last; call [`GroupTx::committed`] once that query succeeded.
    pub(super) fn close(&self) -> &'static str {
        if self.may_commit { "COMMIT;\n" } else { "" }
    }

    /// The query that carried [`GroupTx::close`] succeeded.
    pub(super) fn committed(&mut self) {
        if self.may_commit {
            self.committed = true;
        }
    }
}

/// `BEGIN` for the first query of a group's transaction, once.
fn begin_first(begin: &mut bool) -> &'static str {
    if std::mem::take(begin) {
        "BEGIN;\n"
    } else {
        ""
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

/// End the transaction a group opened (its first query ran) with `COMMIT`
/// unless its last query did, or `ROLLBACK` when not `commit`. A failed
/// `COMMIT` is rolled back. A failed rollback means the connection must be
/// replaced (after a failure inside `BEGIN` itself, or after a write that
/// committed and then failed a check, there is no transaction to roll back,
/// which is fine).
async fn finish(
    conn: &mut SqliteConnection,
    group: &GroupTx,
    commit: bool,
) -> Result<(), WriterError> {
    if group.begin || (commit && group.committed) {
        return Ok(());
    }
    let committed = if commit {
        sqlx::query("COMMIT").execute(&mut *conn).await.map(|_| ())
    } else {
        Ok(())
    };
    if !commit || committed.is_err() {
        match sqlx::query("ROLLBACK").execute(&mut *conn).await {
            Err(e) if !e.to_string().contains("no transaction is active") => {
                let e = ArchiveError::from(e);
                return Err(WriterError::Broken(match committed {
                    Err(c) => ArchiveError::from(c),
                    Ok(()) => e,
                }));
            }
            _ => {}
        }
    }
    Ok(committed.map_err(ArchiveError::from)?)
}
