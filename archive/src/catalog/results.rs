//! Messages, reports and results in the catalog: one transaction per
//! message, corrections kept as history, reads by patient and test.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{
    Catalog, GroupTx, PatientRow, PendingWrite, WriteConn, execute_numbered, now_rfc3339,
    query_one, record_patient, run_numbered,
};
use crate::error::ArchiveError;
use crate::model::patient_key;
use crate::results::{
    Coding, ResultMessage, ResultObservation, ResultReport, StoredObservation, StoredReport,
};

/// The stored raw message a record refers to.
#[derive(Debug, Clone)]
pub struct MessageBlob {
    pub sha256: String,
    pub blob_key: String,
    pub original_size: u64,
    pub stored_size: u64,
}

/// What recording a message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageOutcome {
    Recorded {
        message_id: i64,
        reports: Vec<i64>,
        /// The newest change-feed seq it appended.
        seq: i64,
    },
    /// The same sender and control id are already recorded, with this
    /// SHA-256 of its raw bytes.
    AlreadyPresent { message_id: i64, sha256: String },
}

fn joined(values: &[String]) -> Option<String> {
    (!values.is_empty()).then(|| values.join("\n"))
}

impl Catalog {
    /// The message recorded under this sender and control id, if any: its
    /// id and the SHA-256 of its raw bytes.
    pub async fn message_by_key(
        &self,
        sender: &str,
        control_id: &str,
    ) -> Result<Option<(i64, String)>, ArchiveError> {
        let row =
            sqlx::query("SELECT id, sha256 FROM messages WHERE sender = $1 AND control_id = $2")
                .bind(sender)
                .bind(control_id)
                .fetch_optional(&self.reader)
                .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    /// Record a message: patient, message, reports and results in one
    /// transaction, with the raw message's compressed bytes in the outbox
    /// (`outbox`, when they are not in the object store yet). A corrected
    /// result marks the result it corrects (same patient, same test, same
    /// order) as superseded instead of replacing it. A report without a
    /// study is linked to the study with its accession number. Concurrent
    /// messages and instances are group-committed by the one writer thread.
    pub async fn record_message(
        &self,
        message: &ResultMessage,
        blob: &MessageBlob,
        outbox: Option<Bytes>,
        source: &str,
    ) -> Result<MessageOutcome, ArchiveError> {
        let (reply, answer) = oneshot::channel();
        let pending = PendingWrite::Message(Box::new(PendingMessage {
            message: message.clone(),
            blob: blob.clone(),
            outbox,
            source: source.to_owned(),
            reply,
        }));
        self.queue_write(pending, answer).await
    }

    /// Up to `limit` raw messages waiting in the outbox: (message id,
    /// compressed bytes), oldest first.
    pub async fn outbox_batch(&self, limit: i64) -> Result<Vec<(i64, Bytes)>, ArchiveError> {
        let rows =
            sqlx::query("SELECT message_id, data FROM message_outbox ORDER BY message_id LIMIT $1")
                .bind(limit)
                .fetch_all(&self.reader)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, Bytes::from(r.try_get::<Vec<u8>, _>(1)?))))
            .collect()
    }

    /// The compressed bytes of a raw message still in the outbox.
    pub async fn outbox_blob(&self, message_id: i64) -> Result<Option<Bytes>, ArchiveError> {
        let data: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT data FROM message_outbox WHERE message_id = $1")
                .bind(message_id)
                .fetch_optional(&self.reader)
                .await?;
        Ok(data.map(Bytes::from))
    }

    /// Where the raw bytes of every recorded message are, except the
    /// reports of DICOM instances (their blob is the instance's, which the
    /// instance check covers), by id.
    pub async fn message_blobs(&self) -> Result<Vec<MessageLocation>, ArchiveError> {
        let sql = format!(
            "SELECT {MESSAGE_LOCATION} FROM messages WHERE format <> 'dicom' ORDER BY blob_key, id"
        );
        let rows = sqlx::query(&sql).fetch_all(&self.reader).await?;
        rows.iter().map(message_location).collect()
    }

    /// Where the raw bytes of one message are.
    pub async fn message_blob(
        &self,
        message_id: i64,
    ) -> Result<Option<MessageLocation>, ArchiveError> {
        let sql = format!("SELECT {MESSAGE_LOCATION} FROM messages WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(message_id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(message_location).transpose()
    }

    /// Record that these messages (by id, with the offset of their bytes
    /// in the pack) are now in the object store under `pack_key`, and drop
    /// their outbox rows, in one transaction.
    pub async fn record_pack(
        &self,
        pack_key: &str,
        members: &[(i64, u64)],
    ) -> Result<(), ArchiveError> {
        let pack_key = pack_key.to_owned();
        let members = members.to_vec();
        self.write_job(move |conn| {
            let tx = conn.transaction()?;
            for (message_id, offset) in &members {
                let offset = *offset as i64;
                execute_numbered(
                    &tx,
                    "UPDATE messages SET blob_key = $1, blob_offset = $2 \
                     WHERE id = $3 AND blob_offset IS NULL",
                    &[&pack_key, &offset, message_id],
                )?;
                execute_numbered(
                    &tx,
                    "DELETE FROM message_outbox WHERE message_id = $1",
                    &[message_id],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// The reports linked to a study, oldest first.
    pub async fn study_reports(
        &self,
        study_instance_uid: &str,
    ) -> Result<Vec<StoredReport>, ArchiveError> {
        let sql = format!(
            "SELECT {REPORT_COLUMNS} FROM reports r JOIN patients p ON p.id = r.patient_pk \
             WHERE r.study_instance_uid = $1 ORDER BY r.id"
        );
        let rows = sqlx::query(&sql)
            .bind(study_instance_uid)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(stored_report).collect()
    }

    /// A patient's results (by Patient ID, within `issuer` when given),
    /// oldest first; only `code` if given. Corrected results are included
    /// with `superseded_by` set: a test's history.
    pub async fn patient_observations(
        &self,
        patient_id: &str,
        issuer: Option<&str>,
        code: Option<&str>,
    ) -> Result<Vec<StoredObservation>, ArchiveError> {
        let sql = format!(
            "SELECT {OBSERVATION_COLUMNS} FROM observations o \
             JOIN patients p ON p.id = o.patient_pk \
             WHERE p.patient_id = $1 AND ($2 IS NULL OR p.issuer_of_patient_id = $2) \
             AND ($3 IS NULL OR o.code = $3) \
             ORDER BY o.observed_at, o.id"
        );
        let rows = sqlx::query(&sql)
            .bind(patient_id)
            .bind(issuer)
            .bind(code)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(stored_observation).collect()
    }
}

/// A message waiting for the writer thread's next group commit.
pub(super) struct PendingMessage {
    pub message: ResultMessage,
    pub blob: MessageBlob,
    pub outbox: Option<Bytes>,
    pub source: String,
    pub reply: oneshot::Sender<Result<MessageOutcome, ArchiveError>>,
}

/// Record one message inside the writer's transaction. Every statement
/// has fixed text with its own `$n` (one prepared statement each, reused
/// for every message and every result row); the writer runs them in its
/// own thread, so a statement per row costs no hand-over.
pub(super) fn record_message_in_tx(
    tx: &WriteConn,
    pending: &PendingMessage,
    group: &mut GroupTx,
) -> Result<MessageOutcome, ArchiveError> {
    let (message, blob) = (&pending.message, &pending.blob);
    let now = now_rfc3339();
    if let Some(begin) = group.open() {
        tx.execute_batch(begin)?;
    }
    // The message row first: a message already recorded under this sender
    // and control id fails its UNIQUE constraint there, before anything
    // else is written (SQLite undoes just that statement).
    let inserted = query_one::<i64>(
        tx,
        "INSERT INTO messages (format, message_type, sender, control_id, sha256, blob_key, \
         original_size, stored_size, received_at, source) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        &[
            &message.format.name(),
            &message.message_type,
            &message.sender,
            &message.control_id,
            &blob.sha256,
            &blob.blob_key,
            &(blob.original_size as i64),
            &(blob.stored_size as i64),
            &now,
            &pending.source,
        ],
        "a new message",
    );
    let message_id = match inserted {
        Ok(id) => id,
        Err(ArchiveError::CatalogWriter(rusqlite::Error::SqliteFailure(e, Some(m))))
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                && m.contains("messages.") =>
        {
            let mut present = None;
            run_numbered(
                tx,
                "SELECT id, sha256 FROM messages WHERE sender = $1 AND control_id = $2",
                &[&message.sender, &message.control_id],
                |r| {
                    present = Some((r.get(0)?, r.get(1)?));
                    Ok(())
                },
            )?;
            let Some((message_id, sha256)) = present else {
                return Err(ArchiveError::CatalogWrite(format!(
                    "message {} from {} is a duplicate of nothing",
                    message.control_id, message.sender
                )));
            };
            return Ok(MessageOutcome::AlreadyPresent { message_id, sha256 });
        }
        Err(e) => return Err(e),
    };
    if let Some(data) = &pending.outbox {
        execute_numbered(
            tx,
            "INSERT INTO message_outbox (message_id, data, created_at) VALUES ($1, $2, $3)",
            &[&message_id, &data.as_ref(), &now],
        )?;
    }
    // Each patient (inserted if new), then its reports with their results
    // and change-feed entries.
    let mut reports = Vec::new();
    let mut newest = 0;
    for group in &message.patients {
        let patient = &group.patient;
        let row = PatientRow {
            key: patient_key(
                Some(&patient.id),
                patient.issuer.as_deref(),
                patient.name.as_deref(),
                patient.birth_date.as_deref(),
            ),
            id: Some(&patient.id),
            issuer: patient.issuer.as_deref(),
            name: patient.name.as_deref(),
            birth_date: patient.birth_date.as_deref(),
            sex: patient.sex.as_deref(),
        };
        let patient_pk = record_patient(tx, &row, &now)?;
        for r in &group.reports {
            let (report_id, seq) = record_report(tx, r, message_id, patient_pk, &patient.id, &now)?;
            reports.push(report_id);
            newest = newest.max(seq);
        }
    }
    Ok(MessageOutcome::Recorded {
        message_id,
        reports,
        seq: newest,
    })
}

/// Record one report of a message: the report (filed under its study, or
/// else under the patient's study with its accession number: only a study
/// of the same Patient ID, so a report is never filed under another
/// patient's images even when the two systems spell the assigning
/// authority differently), its results (a corrected result marks the one
/// it corrects) and its change-feed entry. Returns the report id and the
/// change's seq.
fn record_report(
    tx: &WriteConn,
    r: &ResultReport,
    message_id: i64,
    patient_pk: i64,
    patient_id: &str,
    now: &str,
) -> Result<(i64, i64), ArchiveError> {
    let report_id: i64 = query_one(
        tx,
        "INSERT INTO reports (message_id, patient_pk, placer_number, filler_number, \
         accession_number, service_code, service_display, service_system, observed_at, \
         status, report_text, study_instance_uid, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
         COALESCE($12, (SELECT st.study_instance_uid FROM studies st \
         JOIN patients sp ON sp.id = st.patient_pk \
         WHERE st.accession_number = $5 AND sp.patient_id = $13 \
         ORDER BY st.study_date DESC LIMIT 1)), $14) RETURNING id",
        &[
            &message_id,
            &patient_pk,
            &r.placer_number,
            &r.filler_number,
            &r.accession_number,
            &r.service.code,
            &r.service.display,
            &r.service.system,
            &r.observed_at,
            &r.status,
            &r.report_text,
            &r.study_instance_uid,
            &patient_id,
            &now,
        ],
        "a new report",
    )?;
    for o in &r.observations {
        let id: i64 = query_one(
            tx,
            "INSERT INTO observations (report_id, patient_pk, code, code_display, code_system, \
             value_type, value, numeric_value, units, reference_range, abnormal_flags, status, \
             observed_at, notes, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             RETURNING id",
            &[
                &report_id,
                &patient_pk,
                &o.code.code,
                &o.code.display,
                &o.code.system,
                &o.value_type,
                &o.value,
                &o.numeric_value,
                &o.units,
                &o.reference_range,
                &joined(&o.abnormal_flags),
                &o.status,
                &o.observed_at,
                &joined(&o.notes),
                &now,
            ],
            "a new result",
        )?;
        if o.is_correction() {
            supersede_corrected(tx, r, o, id, report_id, patient_pk)?;
        }
    }
    let seq = query_one(
        tx,
        "INSERT INTO changes (kind, report_id, study_instance_uid, recorded_at) \
         VALUES ('report-stored', $1, (SELECT study_instance_uid FROM reports WHERE id = $1), $2) \
         RETURNING seq",
        &[&report_id, &now],
        "the seq of a change",
    )?;
    Ok((report_id, seq))
}

/// Where a message's raw bytes (zstd-compressed) are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageLocation {
    pub message_id: i64,
    pub sha256: String,
    /// The object holding them: the message's own, or a pack.
    pub blob_key: String,
    /// Where they start in a pack (`None`: the whole object).
    pub offset: Option<u64>,
    /// Compressed length.
    pub stored_size: u64,
    /// Length of the raw message.
    pub original_size: u64,
}

const MESSAGE_LOCATION: &str = "id, sha256, blob_key, blob_offset, stored_size, original_size";

fn message_location(r: &SqliteRow) -> Result<MessageLocation, ArchiveError> {
    Ok(MessageLocation {
        message_id: r.try_get(0)?,
        sha256: r.try_get(1)?,
        blob_key: r.try_get(2)?,
        offset: r.try_get::<Option<i64>, _>(3)?.map(|o| o.max(0) as u64),
        stored_size: r.try_get::<i64, _>(4)?.max(0) as u64,
        original_size: r.try_get::<i64, _>(5)?.max(0) as u64,
    })
}

/// The columns [`stored_report`] reads, in its order (reports `r`,
/// patients `p`).
pub(super) const REPORT_COLUMNS: &str = "r.id, p.patient_id, r.placer_number, r.filler_number, \
     r.accession_number, r.service_code, r.service_display, r.service_system, r.observed_at, \
     r.status, r.report_text, r.study_instance_uid, r.sop_instance_uid";

/// A report (without its results) from a row that starts with
/// [`REPORT_COLUMNS`].
pub(super) fn stored_report(r: &SqliteRow) -> Result<StoredReport, ArchiveError> {
    Ok(StoredReport {
        id: r.try_get(0)?,
        patient_id: r.try_get(1)?,
        sop_instance_uid: r.try_get(12)?,
        report: ResultReport {
            placer_number: r.try_get(2)?,
            filler_number: r.try_get(3)?,
            accession_number: r.try_get(4)?,
            service: Coding {
                code: r.try_get(5)?,
                display: r.try_get(6)?,
                system: r.try_get(7)?,
            },
            observed_at: r.try_get(8)?,
            status: r.try_get(9)?,
            report_text: r.try_get(10)?,
            study_instance_uid: r.try_get(11)?,
            observations: Vec::new(),
        },
    })
}

/// The columns [`stored_observation`] reads, in its order (observations
/// `o`).
pub(super) const OBSERVATION_COLUMNS: &str = "o.id, o.report_id, o.code, o.code_display, \
     o.code_system, o.value_type, o.value, o.numeric_value, o.units, o.reference_range, \
     o.abnormal_flags, o.status, o.observed_at, o.notes, o.superseded_by";

/// Lines of a column that joins several values with `\n`.
fn lines(v: Option<String>) -> Vec<String> {
    v.map(|s| s.split('\n').map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A result from a row that starts with [`OBSERVATION_COLUMNS`].
pub(super) fn stored_observation(r: &SqliteRow) -> Result<StoredObservation, ArchiveError> {
    Ok(StoredObservation {
        id: r.try_get(0)?,
        report_id: r.try_get(1)?,
        observation: ResultObservation {
            code: Coding {
                code: r.try_get(2)?,
                display: r.try_get(3)?,
                system: r.try_get(4)?,
            },
            value_type: r.try_get(5)?,
            value: r.try_get(6)?,
            numeric_value: r.try_get(7)?,
            units: r.try_get(8)?,
            reference_range: r.try_get(9)?,
            abnormal_flags: lines(r.try_get(10)?),
            status: r.try_get(11)?,
            observed_at: r.try_get(12)?,
            notes: lines(r.try_get(13)?),
        },
        superseded_by: r.try_get(14)?,
    })
}

/// A corrected result (status C) marks the latest earlier result of the
/// same test in the same order (by filler, placer or accession number) as
/// superseded by it (`id`): history, not an overwrite.
fn supersede_corrected(
    tx: &WriteConn,
    r: &ResultReport,
    o: &ResultObservation,
    id: i64,
    report_id: i64,
    patient_pk: i64,
) -> Result<(), ArchiveError> {
    execute_numbered(
        tx,
        "UPDATE observations SET superseded_by = $1 WHERE id = (\
         SELECT o.id FROM observations o JOIN reports r ON r.id = o.report_id \
         WHERE o.patient_pk = $2 AND o.code IS $3 AND o.id <> $1 AND o.superseded_by IS NULL \
         AND o.report_id <> $7 \
         AND ((r.filler_number IS NOT NULL AND r.filler_number = $4) \
           OR (r.placer_number IS NOT NULL AND r.placer_number = $5) \
           OR (r.accession_number IS NOT NULL AND r.accession_number = $6)) \
         ORDER BY o.id DESC LIMIT 1)",
        &[
            &id,
            &patient_pk,
            &o.code.code,
            &r.filler_number,
            &r.placer_number,
            &r.accession_number,
            &report_id,
        ],
    )?;
    Ok(())
}
