//! Messages, reports and results in the catalog: one transaction per
//! message, corrections kept as history, reads by patient and test.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{
    Catalog, GroupTx, PatientRow, PendingWrite, Script, WriteConn, now_rfc3339, push_patient,
    run_numbered,
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
                run_numbered(
                    &tx,
                    "UPDATE messages SET blob_key = $1, blob_offset = $2 \
                     WHERE id = $3 AND blob_offset IS NULL",
                    &[&pack_key, &offset, message_id],
                    |_| Ok(()),
                )?;
                run_numbered(
                    &tx,
                    "DELETE FROM message_outbox WHERE message_id = $1",
                    &[message_id],
                    |_| Ok(()),
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

/// Record one message inside the writer's transaction: one script, and a
/// statement per corrected result after it.
pub(super) fn record_message_in_tx(
    tx: &WriteConn,
    pending: &PendingMessage,
    group: &mut GroupTx,
) -> Result<MessageOutcome, ArchiveError> {
    let (message, blob) = (&pending.message, &pending.blob);
    let now = now_rfc3339();
    let mut script = Script::default();
    script.push_raw(group.open());
    // The message row first: a message already recorded under this sender
    // and control id fails its UNIQUE constraint there, before anything
    // else of the script runs (SQLite undoes just that statement).
    let now_param = script.bind(now.as_str());
    let p = [
        script.bind(message.format.name()),
        script.bind(&message.message_type),
        script.bind(&message.sender),
        script.bind(&message.control_id),
        script.bind(&blob.sha256),
        script.bind(&blob.blob_key),
        script.bind(blob.original_size as i64),
        script.bind(blob.stored_size as i64),
        now_param.clone(),
        script.bind(pending.source.as_str()),
    ]
    .join(", ");
    script.push(&format!(
        "INSERT INTO messages (format, message_type, sender, control_id, sha256, blob_key, \
         original_size, stored_size, received_at, source) VALUES ({p}) RETURNING id"
    ));
    if let Some(data) = &pending.outbox {
        // Right after the message row: last_insert_rowid() is its id.
        let data = script.bind(data.as_ref());
        script.push(&format!(
            "INSERT INTO message_outbox (message_id, data, created_at) \
             VALUES (last_insert_rowid(), {data}, {now_param})"
        ));
    }
    // A correction needs the ids of its patient and of its report's results
    // (and one more statement after the script); without one, the script is
    // this write's last and may commit the group. Only the ids needed are
    // returned.
    let corrects = message
        .patients
        .iter()
        .flat_map(|g| &g.reports)
        .any(corrects_a_result);
    // Each patient (inserted if new), then its reports with their results
    // and change-feed entries. Rows: the message id, then per patient its
    // id (if `corrects`) and per report the report id, each result's id (if
    // the report corrects one) and the change's seq.
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
        let (key, patient_id) =
            push_patient(&mut script, row, &now_param, corrects.then_some("id"));
        let patient_pk = format!("(SELECT id FROM patients WHERE patient_key = {key})");
        for r in &group.reports {
            push_report(&mut script, r, &patient_pk, &patient_id, &now_param);
        }
    }
    if !corrects {
        script.push_raw(group.close());
    }
    let returned = match script.run(tx, |r| r.get::<_, i64>(0)) {
        Ok(rows) => {
            if !corrects {
                group.committed();
            }
            rows
        }
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
    let result_ids = |r: &ResultReport| {
        if corrects_a_result(r) {
            r.observations.len()
        } else {
            0
        }
    };
    let expected = 1 + message
        .patients
        .iter()
        .map(|g| usize::from(corrects) + g.reports.iter().map(|r| 2 + result_ids(r)).sum::<usize>())
        .sum::<usize>();
    if returned.len() != expected {
        return Err(ArchiveError::CatalogWrite(format!(
            "recording message {} returned {} ids, expected {expected}",
            message.control_id,
            returned.len()
        )));
    }
    let message_id = returned[0];
    let mut rows = returned[1..].iter().copied();
    let mut next = || rows.next().expect("counted above");
    let mut reports = Vec::new();
    let mut newest = 0;
    for group in &message.patients {
        let patient_pk = if corrects { next() } else { 0 };
        for r in &group.reports {
            let report_id = next();
            // Row ids are given in VALUES order (one writer, max + 1 each);
            // RETURNING itself promises no order within a statement.
            let mut ids: Vec<i64> = (0..result_ids(r)).map(|_| next()).collect();
            for chunk in ids.chunks_mut(OBSERVATIONS_PER_INSERT) {
                chunk.sort_unstable();
            }
            newest = newest.max(next());
            reports.push(report_id);
            if !ids.is_empty() {
                supersede_corrected(tx, r, report_id, patient_pk, &ids)?;
            }
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

/// Results per multi-row insert.
const OBSERVATIONS_PER_INSERT: usize = 500;

/// Add one report of a message to `script`: the report (filed under its
/// study, or else under the patient's study with its accession number:
/// only a study of the same Patient ID, so a report is never filed under
/// another patient's images even when the two systems spell the assigning
/// authority differently), its results (one multi-row insert per 500) and
/// its change-feed entry. Within the writer's transaction the new report
/// has the largest id. Returns, in order: the report id, each result's id
/// (only if the report corrects a result), the change's seq.
fn push_report(
    script: &mut Script,
    r: &ResultReport,
    patient_pk: &str,
    patient_id: &str,
    now: &str,
) {
    const NEW_REPORT: &str = "(SELECT max(id) FROM reports)";
    let accession = script.bind(&r.accession_number);
    let p = [
        "(SELECT max(id) FROM messages)".to_owned(),
        patient_pk.to_owned(),
        script.bind(&r.placer_number),
        script.bind(&r.filler_number),
        accession.clone(),
        script.bind(&r.service.code),
        script.bind(&r.service.display),
        script.bind(&r.service.system),
        script.bind(&r.observed_at),
        script.bind(&r.status),
        script.bind(&r.report_text),
    ]
    .join(", ");
    let study = script.bind(&r.study_instance_uid);
    script.push(&format!(
        "INSERT INTO reports (message_id, patient_pk, placer_number, filler_number, \
         accession_number, service_code, service_display, service_system, observed_at, \
         status, report_text, study_instance_uid, created_at) \
         VALUES ({p}, COALESCE({study}, (SELECT st.study_instance_uid FROM studies st \
         JOIN patients sp ON sp.id = st.patient_pk \
         WHERE st.accession_number = {accession} AND sp.patient_id = {patient_id} \
         ORDER BY st.study_date DESC LIMIT 1)), {now}) RETURNING id"
    ));
    for chunk in r.observations.chunks(OBSERVATIONS_PER_INSERT) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|o| {
                let values = [
                    NEW_REPORT.to_owned(),
                    patient_pk.to_owned(),
                    script.bind(&o.code.code),
                    script.bind(&o.code.display),
                    script.bind(&o.code.system),
                    script.bind(&o.value_type),
                    script.bind(&o.value),
                    script.bind(o.numeric_value),
                    script.bind(&o.units),
                    script.bind(&o.reference_range),
                    script.bind(joined(&o.abnormal_flags)),
                    script.bind(&o.status),
                    script.bind(&o.observed_at),
                    script.bind(joined(&o.notes)),
                    now.to_owned(),
                ];
                format!("({})", values.join(", "))
            })
            .collect();
        script.push(&format!(
            "INSERT INTO observations (report_id, patient_pk, code, code_display, code_system, \
             value_type, value, numeric_value, units, reference_range, abnormal_flags, status, \
             observed_at, notes, created_at) VALUES {}{}",
            rows.join(", "),
            if corrects_a_result(r) {
                " RETURNING id"
            } else {
                ""
            }
        ));
    }
    let kind = script.bind("report-stored");
    script.push(&format!(
        "INSERT INTO changes (kind, report_id, study_instance_uid, recorded_at) \
         VALUES ({kind}, {NEW_REPORT}, \
         (SELECT study_instance_uid FROM reports WHERE id = {NEW_REPORT}), {now}) \
         RETURNING seq"
    ));
}

/// Whether a report holds a corrected result (HL7 OBX-11 `C`).
fn corrects_a_result(r: &ResultReport) -> bool {
    r.observations.iter().any(ResultObservation::is_correction)
}

/// A corrected result (status C) marks the latest earlier result of the
/// same test in the same order (by filler, placer or accession number) as
/// superseded by it: history, not an overwrite. `ids` are the report's
/// new result ids in order.
fn supersede_corrected(
    tx: &WriteConn,
    r: &ResultReport,
    report_id: i64,
    patient_pk: i64,
    ids: &[i64],
) -> Result<(), ArchiveError> {
    for (o, &id) in r.observations.iter().zip(ids) {
        if o.is_correction() {
            run_numbered(
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
                |_| Ok(()),
            )?;
        }
    }
    Ok(())
}
