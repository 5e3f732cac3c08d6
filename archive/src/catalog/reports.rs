//! Report-level reads for the search index: one report with its patient,
//! the tests it holds and the study it is linked to, by id in batches and
//! paged over all reports; and the report text of studies.

use std::collections::HashMap;

use sqlx::Row;

use super::{Catalog, MAX_IN_LIST, placeholders};
use crate::error::ArchiveError;
use crate::results::Coding;

/// One report (a lab panel or an imaging report, whatever its front door)
/// as the search index needs it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReportRecord {
    pub report_id: i64,
    /// How it arrived: `hl7v2`, `fhir` or `dicom` (a Structured Report or
    /// an Encapsulated PDF).
    pub format: String,
    pub patient_id: Option<String>,
    pub issuer_of_patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub accession_number: Option<String>,
    /// What was ordered or the document title.
    pub title: Option<String>,
    pub service_code: Option<String>,
    /// `YYYYMMDD[HHMMSS]`, as precise as sent.
    pub observed_at: Option<String>,
    pub status: Option<String>,
    /// The narrative text, if any.
    pub report_text: Option<String>,
    pub study_instance_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    /// Modalities of the linked study's series.
    pub modalities: Vec<String>,
    /// The distinct tests of its results, in order of first appearance.
    pub tests: Vec<Coding>,
}

impl Catalog {
    /// The reports with these ids (those that exist), in no particular order.
    pub async fn report_records(&self, ids: &[i64]) -> Result<Vec<ReportRecord>, ArchiveError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_IN_LIST) {
            let list = placeholders(chunk.len());
            let sql = format!(
                "SELECT r.id, m.format, p.patient_id, p.issuer_of_patient_id, p.patient_name, \
                 r.accession_number, r.service_display, r.service_code, r.observed_at, r.status, \
                 r.report_text, r.study_instance_uid, r.sop_instance_uid \
                 FROM reports r JOIN patients p ON p.id = r.patient_pk \
                 JOIN messages m ON m.id = r.message_id WHERE r.id IN ({list})"
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            let mut records = Vec::with_capacity(chunk.len());
            let mut by_id = HashMap::with_capacity(chunk.len());
            for row in query.fetch_all(&self.reader).await? {
                let record = ReportRecord {
                    report_id: row.try_get(0)?,
                    format: row.try_get(1)?,
                    patient_id: row.try_get(2)?,
                    issuer_of_patient_id: row.try_get(3)?,
                    patient_name: row.try_get(4)?,
                    accession_number: row.try_get(5)?,
                    title: row.try_get(6)?,
                    service_code: row.try_get(7)?,
                    observed_at: row.try_get(8)?,
                    status: row.try_get(9)?,
                    report_text: row.try_get(10)?,
                    study_instance_uid: row.try_get(11)?,
                    sop_instance_uid: row.try_get(12)?,
                    modalities: Vec::new(),
                    tests: Vec::new(),
                };
                by_id.insert(record.report_id, records.len());
                records.push(record);
            }
            let sql = format!(
                "SELECT report_id, code, code_display, code_system FROM observations \
                 WHERE report_id IN ({list}) ORDER BY report_id, id"
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&self.reader).await? {
                let id: i64 = row.try_get(0)?;
                let test = Coding {
                    code: row.try_get(1)?,
                    display: row.try_get(2)?,
                    system: row.try_get(3)?,
                };
                if let Some(&i) = by_id.get(&id)
                    && !records[i].tests.contains(&test)
                {
                    records[i].tests.push(test);
                }
            }
            let sql = format!(
                "SELECT DISTINCT r.id, s.modality FROM reports r \
                 JOIN series s ON s.study_instance_uid = r.study_instance_uid \
                 WHERE s.modality IS NOT NULL AND r.id IN ({list}) ORDER BY r.id, s.modality"
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&self.reader).await? {
                let id: i64 = row.try_get(0)?;
                if let Some(&i) = by_id.get(&id) {
                    records[i].modalities.push(row.try_get(1)?);
                }
            }
            out.extend(records);
        }
        Ok(out)
    }

    /// The report text of each of these studies that has any: the texts of
    /// its reports, oldest first, separated by blank lines.
    pub async fn study_report_texts(
        &self,
        uids: &[String],
    ) -> Result<HashMap<String, String>, ArchiveError> {
        let mut out: HashMap<String, String> = HashMap::new();
        for chunk in uids.chunks(MAX_IN_LIST) {
            let sql = format!(
                "SELECT study_instance_uid, report_text FROM reports \
                 WHERE report_text IS NOT NULL AND study_instance_uid IN ({}) ORDER BY id",
                placeholders(chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for uid in chunk {
                query = query.bind(uid.as_str());
            }
            for row in query.fetch_all(&self.reader).await? {
                let uid: String = row.try_get(0)?;
                let text: String = row.try_get(1)?;
                let entry = out.entry(uid).or_default();
                if !entry.is_empty() {
                    entry.push_str("\n\n");
                }
                entry.push_str(&text);
            }
        }
        Ok(out)
    }

    /// Up to `limit` report ids greater than `after`, ascending: pages over
    /// every report.
    pub async fn report_ids_after(&self, after: i64, limit: i64) -> Result<Vec<i64>, ArchiveError> {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT id FROM reports WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Number of reports.
    pub async fn report_count(&self) -> Result<i64, ArchiveError> {
        Ok(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM reports")
            .fetch_one(&self.reader)
            .await?)
    }
}
