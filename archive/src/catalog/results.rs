//! Messages, reports and results in the catalog: one transaction per
//! message, corrections kept as history, reads by patient and test.

use sqlx::Row;

use sqlx::sqlite::SqliteRow;
use sqlx::{Sqlite, Transaction};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{Catalog, PendingWrite, Script, now_rfc3339};
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
    /// messages and instances are group-committed by the one writer task.
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

    /// Up to `limit` raw messages waiting in the outbox: (SHA-256, blob
    /// key, compressed bytes), oldest first.
    pub async fn outbox_batch(
        &self,
        limit: i64,
    ) -> Result<Vec<(String, String, Bytes)>, ArchiveError> {
        let rows = sqlx::query(
            "SELECT sha256, blob_key, data FROM message_outbox ORDER BY created_at LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    Bytes::from(r.try_get::<Vec<u8>, _>(2)?),
                ))
            })
            .collect()
    }

    /// The compressed bytes of a raw message still in the outbox.
    pub async fn outbox_blob(&self, sha256: &str) -> Result<Option<Bytes>, ArchiveError> {
        let data: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT data FROM message_outbox WHERE sha256 = $1")
                .bind(sha256)
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

    /// Record that the messages with these SHA-256s (and `(offset,
    /// length)` in `pack`) are now in the object store under `pack_key`,
    /// and drop their outbox rows, in one transaction.
    pub async fn record_pack(
        &self,
        pack_key: &str,
        members: &[(String, u64)],
    ) -> Result<(), ArchiveError> {
        let mut tx = self.writer.begin().await?;
        // A few scripts rather than two statements per message: the writer
        // connection is shared with ingest, which waits meanwhile.
        for chunk in members.chunks(500) {
            let mut script = Script::default();
            let pack = script.param();
            for _ in chunk {
                let (offset, sha) = (script.param(), script.param());
                script.push(&format!(
                    "UPDATE messages SET blob_key = ${pack}, blob_offset = ${offset} \
                     WHERE sha256 = ${sha} AND blob_offset IS NULL AND format <> 'dicom'"
                ));
                script.push(&format!("DELETE FROM message_outbox WHERE sha256 = ${sha}"));
            }
            let mut query = sqlx::query(&script.sql).bind(pack_key);
            for (sha256, offset) in chunk {
                query = query.bind(*offset as i64).bind(sha256);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
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

/// A message waiting for the writer task's next group commit.
pub(super) struct PendingMessage {
    pub message: ResultMessage,
    pub blob: MessageBlob,
    pub outbox: Option<Bytes>,
    pub source: String,
    pub reply: oneshot::Sender<Result<MessageOutcome, ArchiveError>>,
}

/// Record one message inside the writer's transaction.
pub(super) async fn record_message_in_tx(
    tx: &mut Transaction<'_, Sqlite>,
    pending: &PendingMessage,
) -> Result<MessageOutcome, ArchiveError> {
    let (message, blob, source) = (&pending.message, &pending.blob, pending.source.as_str());
    if let Some(row) =
        sqlx::query("SELECT id, sha256 FROM messages WHERE sender = $1 AND control_id = $2")
            .bind(&message.sender)
            .bind(&message.control_id)
            .fetch_optional(&mut **tx)
            .await?
    {
        return Ok(MessageOutcome::AlreadyPresent {
            message_id: row.try_get(0)?,
            sha256: row.try_get(1)?,
        });
    }
    let now = now_rfc3339();
    // One round trip: the message row, its patients (the no-op update makes
    // RETURNING give the id of an existing patient too) and its bytes in
    // the outbox. Rows: the message id, then each patient's id.
    let mut script = Script::default();
    let p = script.params(10);
    script.push(&format!(
        "INSERT INTO messages (format, message_type, sender, control_id, sha256, blob_key, \
         original_size, stored_size, received_at, source) VALUES ({p}) RETURNING id"
    ));
    for _ in &message.patients {
        let p = script.params(7);
        script.push(&format!(
            "INSERT INTO patients (patient_key, patient_id, issuer_of_patient_id, patient_name, \
             birth_date, sex, created_at) VALUES ({p}) \
             ON CONFLICT (patient_key) DO UPDATE SET patient_key = excluded.patient_key RETURNING id"
        ));
    }
    if pending.outbox.is_some() {
        let p = script.params(4);
        script.push(&format!(
            "INSERT INTO message_outbox (sha256, blob_key, data, created_at) VALUES ({p}) \
             ON CONFLICT (sha256) DO NOTHING"
        ));
    }
    let mut query = sqlx::query_scalar::<_, i64>(&script.sql)
        .bind(message.format.name())
        .bind(&message.message_type)
        .bind(&message.sender)
        .bind(&message.control_id)
        .bind(&blob.sha256)
        .bind(&blob.blob_key)
        .bind(blob.original_size as i64)
        .bind(blob.stored_size as i64)
        .bind(&now)
        .bind(source);
    for group in &message.patients {
        let p = &group.patient;
        query = query
            .bind(patient_key(
                Some(&p.id),
                p.issuer.as_deref(),
                p.name.as_deref(),
                p.birth_date.as_deref(),
            ))
            .bind(&p.id)
            .bind(&p.issuer)
            .bind(&p.name)
            .bind(&p.birth_date)
            .bind(&p.sex)
            .bind(&now);
    }
    if let Some(data) = &pending.outbox {
        query = query
            .bind(&blob.sha256)
            .bind(&blob.blob_key)
            .bind(data.as_ref())
            .bind(&now);
    }
    let ids = query.fetch_all(&mut **tx).await?;
    let [message_id, patient_pks @ ..] = &ids[..] else {
        return Err(ArchiveError::CatalogWrite(
            "recording a message returned no id".into(),
        ));
    };
    if patient_pks.len() != message.patients.len() {
        return Err(ArchiveError::CatalogWrite(format!(
            "recording a message returned {} patient ids for {} patients",
            patient_pks.len(),
            message.patients.len()
        )));
    }
    let message_id = *message_id;
    let mut reports = Vec::new();
    let mut newest = 0;
    for (group, &patient_pk) in message.patients.iter().zip(patient_pks) {
        for r in &group.reports {
            let (report_id, seq) =
                insert_report(tx, message_id, patient_pk, &group.patient.id, r, &now).await?;
            newest = newest.max(seq);
            reports.push(report_id);
        }
    }
    Ok(MessageOutcome::Recorded {
        message_id,
        reports,
        seq: newest,
    })
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

/// Insert one report of a message and its results (a correction marks the
/// result it corrects as superseded) and append the report to the change
/// feed. A report without a study is linked to the study of its patient
/// with its accession number. Returns the report id and the change seq.
pub(crate) async fn insert_report(
    tx: &mut Transaction<'_, Sqlite>,
    message_id: i64,
    patient_pk: i64,
    patient_id: &str,
    r: &ResultReport,
    now: &str,
) -> Result<(i64, i64), ArchiveError> {
    // One round trip: the report (filed under its study, or else under the
    // patient's study with its accession number: only a study of the same
    // Patient ID, so a report is never filed under another patient's images
    // even when the two systems spell the assigning authority differently),
    // its results (one multi-row insert per 500), and its change-feed entry.
    // Within the writer's transaction the new report has the largest id.
    // Rows: the report id, each result's id, the change's seq.
    const NEW_REPORT: &str = "(SELECT max(id) FROM reports)";
    let mut script = Script::default();
    let p = script.params(11);
    let (study, accession, patient, created) = (
        script.param(),
        script.param(),
        script.param(),
        script.param(),
    );
    script.push(&format!(
        "INSERT INTO reports (message_id, patient_pk, placer_number, filler_number, \
         accession_number, service_code, service_display, service_system, observed_at, \
         status, report_text, study_instance_uid, created_at) \
         VALUES ({p}, COALESCE(${study}, (SELECT st.study_instance_uid FROM studies st \
         JOIN patients sp ON sp.id = st.patient_pk \
         WHERE st.accession_number = ${accession} AND sp.patient_id = ${patient} \
         ORDER BY st.study_date DESC LIMIT 1)), ${created}) RETURNING id"
    ));
    for chunk in r.observations.chunks(500) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|_| format!("({NEW_REPORT}, {})", script.params(14)))
            .collect();
        script.push(&format!(
            "INSERT INTO observations (report_id, patient_pk, code, code_display, code_system, \
             value_type, value, numeric_value, units, reference_range, abnormal_flags, status, \
             observed_at, notes, created_at) VALUES {} RETURNING id",
            rows.join(", ")
        ));
    }
    let kind = script.param();
    script.push(&format!(
        "INSERT INTO changes (kind, report_id, study_instance_uid, recorded_at) \
         VALUES (${kind}, {NEW_REPORT}, \
         (SELECT study_instance_uid FROM reports WHERE id = {NEW_REPORT}), ${created}) \
         RETURNING seq"
    ));
    let mut query = sqlx::query_scalar::<_, i64>(&script.sql)
        .bind(message_id)
        .bind(patient_pk)
        .bind(&r.placer_number)
        .bind(&r.filler_number)
        .bind(&r.accession_number)
        .bind(&r.service.code)
        .bind(&r.service.display)
        .bind(&r.service.system)
        .bind(&r.observed_at)
        .bind(&r.status)
        .bind(&r.report_text)
        .bind(&r.study_instance_uid)
        .bind(&r.accession_number)
        .bind(patient_id)
        .bind(now);
    for o in &r.observations {
        query = query
            .bind(patient_pk)
            .bind(&o.code.code)
            .bind(&o.code.display)
            .bind(&o.code.system)
            .bind(&o.value_type)
            .bind(&o.value)
            .bind(o.numeric_value)
            .bind(&o.units)
            .bind(&o.reference_range)
            .bind(joined(&o.abnormal_flags))
            .bind(&o.status)
            .bind(&o.observed_at)
            .bind(joined(&o.notes))
            .bind(now);
    }
    let returned = query.bind("report-stored").fetch_all(&mut **tx).await?;
    let n = r.observations.len();
    let [report_id, result_ids @ .., seq] = &returned[..] else {
        return Err(ArchiveError::CatalogWrite(
            "recording a report returned too few rows".into(),
        ));
    };
    if result_ids.len() != n {
        return Err(ArchiveError::CatalogWrite(format!(
            "recording a report returned {} result ids for {n} results",
            result_ids.len()
        )));
    }
    let (report_id, seq) = (*report_id, *seq);
    // Row ids are given in VALUES order (one writer, max + 1 each);
    // RETURNING itself promises no order within a statement.
    let mut ids = result_ids.to_vec();
    for chunk in ids.chunks_mut(500) {
        chunk.sort_unstable();
    }
    for (o, &id) in r.observations.iter().zip(&ids) {
        if o.is_correction() {
            // The latest earlier result of the same test in the same
            // order (by filler, placer or accession number).
            sqlx::query(
                "UPDATE observations SET superseded_by = $1 WHERE id = (\
                 SELECT o.id FROM observations o JOIN reports r ON r.id = o.report_id \
                 WHERE o.patient_pk = $2 AND o.code IS $3 AND o.id <> $1 AND o.superseded_by IS NULL \
                 AND o.report_id <> $7 \
                 AND ((r.filler_number IS NOT NULL AND r.filler_number = $4) \
                   OR (r.placer_number IS NOT NULL AND r.placer_number = $5) \
                   OR (r.accession_number IS NOT NULL AND r.accession_number = $6)) \
                 ORDER BY o.id DESC LIMIT 1)",
            )
            .bind(id)
            .bind(patient_pk)
            .bind(&o.code.code)
            .bind(&r.filler_number)
            .bind(&r.placer_number)
            .bind(&r.accession_number)
            .bind(report_id)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok((report_id, seq))
}
