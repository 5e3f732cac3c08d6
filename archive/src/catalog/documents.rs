//! Reports held by DICOM instances (Structured Reports, Encapsulated PDF)
//! in the one results model: a `messages` row for the instance (format
//! `dicom`, the SOP Instance UID as control id, the instance's blob) and a
//! `reports` row with the extracted text, written in the transaction that
//! records the instance, so an acknowledged SR always has its report.

use super::{
    BlobRecord, WriteConn, append_report_change, execute_numbered, query_numbered, query_one,
};
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
pub(crate) fn record_document(
    tx: &WriteConn,
    patient_pk: i64,
    attrs: &InstanceAttributes,
    blob: &BlobRecord,
    source: &str,
    doc: Option<&ReportDocument>,
    now: &str,
) -> Result<Option<i64>, ArchiveError> {
    // The report of an earlier version of this instance, if any.
    let report_id: Option<i64> = query_numbered(
        tx,
        "SELECT r.id FROM messages m JOIN reports r ON r.message_id = m.id \
         WHERE m.sender = $1 AND m.control_id = $2 ORDER BY r.id LIMIT 1",
        &[&DICOM_SENDER, &attrs.sop_instance_uid],
    )?
    .first()
    .copied();
    let Some(doc) = doc else {
        if let Some(report_id) = report_id {
            execute_numbered(
                tx,
                "UPDATE reports SET report_text = NULL WHERE id = $1",
                &[&report_id],
            )?;
            let seq = append_report_change(
                tx,
                "report-stored",
                report_id,
                Some(&attrs.study_instance_uid),
                now,
            )?;
            return Ok(Some(seq));
        }
        return Ok(None);
    };
    // The instance's message row: new, or pointed at the replacing blob.
    let message_id: i64 = query_one(
        tx,
        "INSERT INTO messages (format, message_type, sender, control_id, sha256, blob_key, \
         original_size, stored_size, received_at, source) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (sender, control_id) DO UPDATE SET message_type = excluded.message_type, \
         sha256 = excluded.sha256, blob_key = excluded.blob_key, \
         original_size = excluded.original_size, stored_size = excluded.stored_size, \
         received_at = excluded.received_at, source = excluded.source \
         RETURNING id",
        &[
            &DICOM_FORMAT,
            &doc.kind,
            &DICOM_SENDER,
            &attrs.sop_instance_uid,
            &blob.sha256,
            &blob.blob_key,
            &(blob.original_size as i64),
            &(blob.stored_size as i64),
            &now,
            &source,
        ],
        "the message of a report instance",
    )?;
    // A replaced instance updates its report in place (same id, message
    // and creation time); a new one inserts it.
    let report_id: i64 = query_one(
        tx,
        "INSERT INTO reports (id, message_id, patient_pk, accession_number, service_code, \
         service_display, service_system, observed_at, status, report_text, \
         study_instance_uid, sop_instance_uid, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (id) DO UPDATE SET patient_pk = excluded.patient_pk, \
         accession_number = excluded.accession_number, service_code = excluded.service_code, \
         service_display = excluded.service_display, service_system = excluded.service_system, \
         observed_at = excluded.observed_at, status = excluded.status, \
         report_text = excluded.report_text, study_instance_uid = excluded.study_instance_uid, \
         sop_instance_uid = excluded.sop_instance_uid \
         RETURNING id",
        &[
            &report_id,
            &message_id,
            &patient_pk,
            &attrs.accession_number,
            &doc.title_code,
            &doc.title,
            &doc.title_code_system,
            &doc.observed_at,
            &doc.status,
            &doc.text,
            &attrs.study_instance_uid,
            &attrs.sop_instance_uid,
            &now,
        ],
        "the report of an instance",
    )?;
    let seq = append_report_change(
        tx,
        "report-stored",
        report_id,
        Some(&attrs.study_instance_uid),
        now,
    )?;
    Ok(Some(seq))
}
