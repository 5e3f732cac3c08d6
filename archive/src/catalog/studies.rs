//! Study-level reads for the search index: one study with its patient,
//! modalities and counts, by UID in batches, and paged over all studies.

use std::collections::HashMap;

use sqlx::Row;

use super::{Catalog, MAX_IN_LIST, placeholders};
use crate::error::ArchiveError;

/// One study as the catalog knows it, with its patient's attributes, the
/// distinct modalities of its series and its series and instance counts.
/// The search index stores and returns the same record.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StudyRecord {
    pub study_instance_uid: String,
    pub patient_name: Option<String>,
    pub patient_id: Option<String>,
    pub issuer_of_patient_id: Option<String>,
    pub patient_birth_date: Option<String>,
    pub patient_sex: Option<String>,
    pub study_date: Option<String>,
    pub study_time: Option<String>,
    pub accession_number: Option<String>,
    pub study_id: Option<String>,
    pub study_description: Option<String>,
    pub referring_physician_name: Option<String>,
    /// Distinct modalities of the study's series, sorted.
    pub modalities: Vec<String>,
    pub number_of_series: u64,
    pub number_of_instances: u64,
}

impl Catalog {
    /// The studies with these UIDs (those that exist), in no particular
    /// order. Reads on the read-only pool, a few queries per 500 UIDs.
    pub async fn study_records(&self, uids: &[String]) -> Result<Vec<StudyRecord>, ArchiveError> {
        let mut out = Vec::with_capacity(uids.len());
        for chunk in uids.chunks(MAX_IN_LIST) {
            let list = placeholders(chunk.len());
            let sql = format!(
                "SELECT st.study_instance_uid, p.patient_name, p.patient_id, p.issuer_of_patient_id, \
                 p.birth_date, p.sex, st.study_date, st.study_time, st.accession_number, st.study_id, \
                 st.study_description, st.referring_physician_name, \
                 (SELECT COUNT(*) FROM series c WHERE c.study_instance_uid = st.study_instance_uid), \
                 (SELECT COUNT(*) FROM instances c WHERE c.study_instance_uid = st.study_instance_uid) \
                 FROM studies st JOIN patients p ON p.id = st.patient_pk \
                 WHERE st.study_instance_uid IN ({list})"
            );
            let mut query = sqlx::query(&sql);
            for uid in chunk {
                query = query.bind(uid.as_str());
            }
            let rows = query.fetch_all(&self.reader).await?;
            let mut records = Vec::with_capacity(rows.len());
            let mut by_uid = HashMap::with_capacity(rows.len());
            for row in rows {
                let record = StudyRecord {
                    study_instance_uid: row.try_get(0)?,
                    patient_name: row.try_get(1)?,
                    patient_id: row.try_get(2)?,
                    issuer_of_patient_id: row.try_get(3)?,
                    patient_birth_date: row.try_get(4)?,
                    patient_sex: row.try_get(5)?,
                    study_date: row.try_get(6)?,
                    study_time: row.try_get(7)?,
                    accession_number: row.try_get(8)?,
                    study_id: row.try_get(9)?,
                    study_description: row.try_get(10)?,
                    referring_physician_name: row.try_get(11)?,
                    modalities: Vec::new(),
                    number_of_series: row.try_get::<i64, _>(12)?.max(0) as u64,
                    number_of_instances: row.try_get::<i64, _>(13)?.max(0) as u64,
                };
                by_uid.insert(record.study_instance_uid.clone(), records.len());
                records.push(record);
            }
            let sql = format!(
                "SELECT DISTINCT study_instance_uid, modality FROM series \
                 WHERE modality IS NOT NULL AND study_instance_uid IN ({list}) \
                 ORDER BY study_instance_uid, modality"
            );
            let mut query = sqlx::query(&sql);
            for uid in chunk {
                query = query.bind(uid.as_str());
            }
            for row in query.fetch_all(&self.reader).await? {
                let uid: String = row.try_get(0)?;
                let modality: String = row.try_get(1)?;
                if let Some(&i) = by_uid.get(&uid) {
                    records[i].modalities.push(modality);
                }
            }
            out.extend(records);
        }
        Ok(out)
    }

    /// Up to `limit` study UIDs greater than `after` (all from the start
    /// with `None`), in ascending order: pages over every study.
    pub async fn study_uids_after(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<String>, ArchiveError> {
        Ok(sqlx::query_scalar::<_, String>(
            "SELECT study_instance_uid FROM studies WHERE study_instance_uid > $1 \
             ORDER BY study_instance_uid LIMIT $2",
        )
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Number of studies.
    pub async fn study_count(&self) -> Result<i64, ArchiveError> {
        Ok(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM studies")
            .fetch_one(&self.reader)
            .await?)
    }

    /// The newest change-feed sequence number (0 when the feed is empty).
    pub async fn last_change_seq(&self) -> Result<i64, ArchiveError> {
        Ok(
            sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(seq), 0) FROM changes")
                .fetch_one(&self.reader)
                .await?,
        )
    }
}
