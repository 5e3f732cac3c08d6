//! Reports held by DICOM instances (Structured Reports, Encapsulated PDF)
//! in the one results model: a `messages` row for the instance (format
//! `dicom`, the SOP Instance UID as control id, the instance's blob) and a
//! `reports` row with the extracted text, written in the transaction that
//! records the instance, so an acknowledged SR always has its report.

use sqlx::{Row, SqliteConnection};

use super::{BlobRecord, append_report_change};
use crate::error::ArchiveError;
use crate::ingest::ReportDocument;
use crate::model::InstanceAttributes;

/// Sender of the `messages` rows of reports that arrive as DICOM
/// instances; with the SOP Instance UID as control id, one row per instance.
pub(crate) const DICOM_SENDER: &str = "dicom";
/// Their `messages.format`.
pub(crate) const DICOM_FORMAT: &str = "dicom";

/// Record the report of a new or replaced instance; returns the seq of the
/// change-feed entry it appended, if any.
///
/// A new instance gets a message and a report. A replaced instance (an
/// allowed replacement with other content) updates both: the message points
/// at the new blob, the report holds the new text. A replacement whose
/// text cannot be read (`doc` is `None`) keeps its report without text,
/// never the text of the version it replaced.
pub(crate) async fn record_document(
    tx: &mut SqliteConnection,
    patient_pk: i64,
    attrs: &InstanceAttributes,
    blob: &BlobRecord,
    source: &str,
    doc: Option<&ReportDocument>,
    now: &str,
) -> Result<Option<i64>, ArchiveError> {
    let recorded = sqlx::query(
        "SELECT m.id, (SELECT r.id FROM reports r WHERE r.message_id = m.id ORDER BY r.id LIMIT 1) \
         FROM messages m WHERE m.sender = $1 AND m.control_id = $2",
    )
    .bind(DICOM_SENDER)
    .bind(&attrs.sop_instance_uid)
    .fetch_optional(&mut *tx)
    .await?;
    let (message_id, report_id): (Option<i64>, Option<i64>) = match &recorded {
        Some(row) => (Some(row.try_get(0)?), row.try_get(1)?),
        None => (None, None),
    };
    let Some(doc) = doc else {
        if let Some(report_id) = report_id {
            sqlx::query("UPDATE reports SET report_text = NULL WHERE id = $1")
                .bind(report_id)
                .execute(&mut *tx)
                .await?;
            let seq = append_report_change(
                tx,
                "report-stored",
                report_id,
                Some(&attrs.study_instance_uid),
                now,
            )
            .await?;
            return Ok(Some(seq));
        }
        return Ok(None);
    };
    let message_id =
        match message_id {
            Some(id) => {
                sqlx::query(
                    "UPDATE messages SET message_type = $1, sha256 = $2, blob_key = $3, \
                 original_size = $4, stored_size = $5, received_at = $6, source = $7 WHERE id = $8",
                )
                .bind(doc.kind)
                .bind(&blob.sha256)
                .bind(&blob.blob_key)
                .bind(blob.original_size as i64)
                .bind(blob.stored_size as i64)
                .bind(now)
                .bind(source)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                id
            }
            None => sqlx::query_scalar(
                "INSERT INTO messages (format, message_type, sender, control_id, sha256, blob_key, \
                 original_size, stored_size, received_at, source) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            )
            .bind(DICOM_FORMAT)
            .bind(doc.kind)
            .bind(DICOM_SENDER)
            .bind(&attrs.sop_instance_uid)
            .bind(&blob.sha256)
            .bind(&blob.blob_key)
            .bind(blob.original_size as i64)
            .bind(blob.stored_size as i64)
            .bind(now)
            .bind(source)
            .fetch_one(&mut *tx)
            .await?,
        };
    let report_id = match report_id {
        Some(id) => {
            sqlx::query(
                "UPDATE reports SET patient_pk = $1, accession_number = $2, service_code = $3, \
                 service_display = $4, service_system = $5, observed_at = $6, status = $7, \
                 report_text = $8, study_instance_uid = $9, sop_instance_uid = $10 WHERE id = $11",
            )
            .bind(patient_pk)
            .bind(&attrs.accession_number)
            .bind(&doc.title_code)
            .bind(&doc.title)
            .bind(&doc.title_code_system)
            .bind(&doc.observed_at)
            .bind(&doc.status)
            .bind(&doc.text)
            .bind(&attrs.study_instance_uid)
            .bind(&attrs.sop_instance_uid)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            id
        }
        None => {
            sqlx::query_scalar(
                "INSERT INTO reports (message_id, patient_pk, accession_number, service_code, \
                 service_display, service_system, observed_at, status, report_text, \
                 study_instance_uid, sop_instance_uid, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
            )
            .bind(message_id)
            .bind(patient_pk)
            .bind(&attrs.accession_number)
            .bind(&doc.title_code)
            .bind(&doc.title)
            .bind(&doc.title_code_system)
            .bind(&doc.observed_at)
            .bind(&doc.status)
            .bind(&doc.text)
            .bind(&attrs.study_instance_uid)
            .bind(&attrs.sop_instance_uid)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?
        }
    };
    let seq = append_report_change(
        tx,
        "report-stored",
        report_id,
        Some(&attrs.study_instance_uid),
        now,
    )
    .await?;
    Ok(Some(seq))
}
