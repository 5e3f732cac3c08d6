//! Reads of the results model for the FHIR front door: reports,
//! observations and patients by catalog row id, and the searches FHIR
//! clients make (patient, code, date, status, paging).
//!
//! This module owns only SQL. What the parameters mean in FHIR (date
//! prefixes, `system|code`, LOINC's two names) is decided by the caller,
//! which hands over plain conditions. Queries are portable: `$n` binds,
//! `substr`, `||`, `LIMIT`/`OFFSET`, nothing SQLite-only, so they run on
//! PostgreSQL unchanged. Nothing here writes.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::Catalog;
use super::results::{OBSERVATION_COLUMNS, REPORT_COLUMNS, stored_observation, stored_report};
use crate::error::ArchiveError;
use crate::results::{StoredObservation, StoredReport};

/// A patient row as results are filed under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientRecord {
    /// The catalog row id.
    pub pk: i64,
    pub patient_id: Option<String>,
    pub issuer: Option<String>,
    /// DICOM PN form.
    pub name: Option<String>,
    /// `YYYYMMDD`.
    pub birth_date: Option<String>,
    pub sex: Option<String>,
}

/// A stored report with what a FHIR DiagnosticReport needs besides it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRecord {
    pub report: StoredReport,
    /// The catalog row id of its patient.
    pub patient_pk: i64,
    pub issuer: Option<String>,
    /// The message it came in.
    pub message_id: i64,
    /// Its results' row ids, in the order they were sent.
    pub result_ids: Vec<i64>,
}

/// A stored result with its patient.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservationRecord {
    pub observation: StoredObservation,
    pub patient_pk: i64,
    pub patient_id: Option<String>,
    pub issuer: Option<String>,
}

/// One code a search accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeCondition {
    pub code: String,
    /// `None`: any coding system; `Some(empty)`: no coding system; else one
    /// of these names (a system may be spelled several ways: `LN`,
    /// `http://loinc.org`).
    pub systems: Option<Vec<String>>,
}

/// A condition on the time a result was observed. Bounds are
/// `YYYYMMDDHHMMSS`; stored times are compared on their first 14 digits,
/// padded with zeros (so `20240115` is the start of that day).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeCondition {
    /// `from <= t < until`.
    Within { from: String, until: String },
    /// `t < from` or `t >= until`.
    Outside { from: String, until: String },
    /// `t >= bound`.
    AtOrAfter(String),
    /// `t < bound`.
    Before(String),
}

/// A search over reports or results. Conditions of one list are OR'ed
/// (except `times`, which are AND'ed); lists are AND'ed. An empty list is
/// no condition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultSearch {
    /// Row ids of the reports / results themselves.
    pub ids: Vec<i64>,
    /// Patient row ids.
    pub patients: Vec<i64>,
    /// `(issuer, Patient ID)`; `None` as issuer: any issuer.
    pub patient_identifiers: Vec<(Option<String>, String)>,
    /// Only patients with these Patient IDs (a patient-scoped principal);
    /// `None`: everyone.
    pub scope: Option<Vec<String>>,
    pub codes: Vec<CodeCondition>,
    pub times: Vec<TimeCondition>,
    /// Stored status values (HL7 letters).
    pub statuses: Vec<String>,
    /// Results only: leave out results superseded by a correction.
    pub current_only: bool,
    pub limit: i64,
    pub offset: i64,
}

/// A search over patients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatientSearch {
    pub ids: Vec<i64>,
    /// `(issuer, Patient ID)` as in [`ResultSearch`].
    pub identifiers: Vec<(Option<String>, String)>,
    pub scope: Option<Vec<String>>,
    pub limit: i64,
    pub offset: i64,
}

/// One page of matches and how many there are in all.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub total: i64,
    pub items: Vec<T>,
}

/// A bound value of a query being built.
enum Bind {
    Text(String),
    Int(i64),
}

/// A WHERE clause with `$n` placeholders and their values, in order.
#[derive(Default)]
struct Conditions {
    clauses: Vec<String>,
    binds: Vec<Bind>,
}

impl Conditions {
    fn bind(&mut self, value: Bind) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    fn text(&mut self, value: &str) -> String {
        self.bind(Bind::Text(value.to_owned()))
    }

    fn int(&mut self, value: i64) -> String {
        self.bind(Bind::Int(value))
    }

    fn push(&mut self, clause: String) {
        self.clauses.push(clause);
    }

    /// `column IN (...)` over integers; nothing when `values` is empty.
    fn ints_in(&mut self, column: &str, values: &[i64]) {
        if values.is_empty() {
            return;
        }
        let list: Vec<String> = values.iter().map(|v| self.int(*v)).collect();
        self.push(format!("{column} IN ({})", list.join(", ")));
    }

    fn texts_in(&mut self, column: &str, values: &[String]) {
        let list: Vec<String> = values.iter().map(|v| self.text(v)).collect();
        if list.is_empty() {
            // An empty scope sees nothing.
            self.push("1 = 0".into());
        } else {
            self.push(format!("{column} IN ({})", list.join(", ")));
        }
    }

    fn identifiers(&mut self, ids: &[(Option<String>, String)]) {
        if ids.is_empty() {
            return;
        }
        let mut any = Vec::new();
        for (issuer, id) in ids {
            let id = self.text(id);
            any.push(match issuer {
                Some(issuer) => {
                    let issuer = self.text(issuer);
                    format!("(p.patient_id = {id} AND p.issuer_of_patient_id = {issuer})")
                }
                None => format!("p.patient_id = {id}"),
            });
        }
        self.push(format!("({})", any.join(" OR ")));
    }

    fn codes(&mut self, code: &str, system: &str, wanted: &[CodeCondition]) {
        if wanted.is_empty() {
            return;
        }
        let mut any = Vec::new();
        for c in wanted {
            let value = self.text(&c.code);
            any.push(match &c.systems {
                None => format!("{code} = {value}"),
                Some(systems) if systems.is_empty() => {
                    format!("({code} = {value} AND {system} IS NULL)")
                }
                Some(systems) => {
                    let list: Vec<String> = systems.iter().map(|s| self.text(s)).collect();
                    format!("({code} = {value} AND {system} IN ({}))", list.join(", "))
                }
            });
        }
        self.push(format!("({})", any.join(" OR ")));
    }

    fn times(&mut self, column: &str, wanted: &[TimeCondition]) {
        // NULL stays NULL through || and substr: a result without a time
        // matches no time condition.
        let t = format!("substr({column} || '00000000000000', 1, 14)");
        for w in wanted {
            let clause = match w {
                TimeCondition::Within { from, until } => {
                    let (from, until) = (self.text(from), self.text(until));
                    format!("({t} >= {from} AND {t} < {until})")
                }
                TimeCondition::Outside { from, until } => {
                    let (from, until) = (self.text(from), self.text(until));
                    format!("({t} < {from} OR {t} >= {until})")
                }
                TimeCondition::AtOrAfter(bound) => format!("{t} >= {}", self.text(bound)),
                TimeCondition::Before(bound) => format!("{t} < {}", self.text(bound)),
            };
            self.push(clause);
        }
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    fn result_search(&mut self, alias: &str, s: &ResultSearch, code: &str, system: &str) {
        self.ints_in(&format!("{alias}.id"), &s.ids);
        self.ints_in(&format!("{alias}.patient_pk"), &s.patients);
        self.identifiers(&s.patient_identifiers);
        if let Some(scope) = &s.scope {
            self.texts_in("p.patient_id", scope);
        }
        self.codes(
            &format!("{alias}.{code}"),
            &format!("{alias}.{system}"),
            &s.codes,
        );
        self.times(&format!("{alias}.observed_at"), &s.times);
        if !s.statuses.is_empty() {
            let list: Vec<String> = s.statuses.iter().map(|v| self.text(v)).collect();
            self.push(format!("{alias}.status IN ({})", list.join(", ")));
        }
    }
}

macro_rules! bound {
    ($query:expr, $binds:expr) => {{
        let mut q = $query;
        for b in $binds {
            q = match b {
                Bind::Text(s) => q.bind(s),
                Bind::Int(i) => q.bind(i),
            };
        }
        q
    }};
}

/// Reports with their patient row, issuer and message: [`REPORT_COLUMNS`]
/// then those three.
fn report_columns() -> String {
    format!("{REPORT_COLUMNS}, r.patient_pk, p.issuer_of_patient_id, r.message_id")
}

const REPORTS_FROM: &str = "reports r JOIN patients p ON p.id = r.patient_pk";

/// Results with their patient: [`OBSERVATION_COLUMNS`] then the patient
/// row, Patient ID and issuer.
fn observation_columns() -> String {
    format!("{OBSERVATION_COLUMNS}, o.patient_pk, p.patient_id, p.issuer_of_patient_id")
}

const OBSERVATIONS_FROM: &str = "observations o JOIN patients p ON p.id = o.patient_pk";

const PATIENT_COLUMNS: &str =
    "p.id, p.patient_id, p.issuer_of_patient_id, p.patient_name, p.birth_date, p.sex";

fn report_of(r: &SqliteRow) -> Result<ReportRecord, ArchiveError> {
    Ok(ReportRecord {
        report: stored_report(r)?,
        patient_pk: r.try_get(13)?,
        issuer: r.try_get(14)?,
        message_id: r.try_get(15)?,
        result_ids: Vec::new(),
    })
}

fn observation_of(r: &SqliteRow) -> Result<ObservationRecord, ArchiveError> {
    Ok(ObservationRecord {
        observation: stored_observation(r)?,
        patient_pk: r.try_get(15)?,
        patient_id: r.try_get(16)?,
        issuer: r.try_get(17)?,
    })
}

fn patient_of(r: &SqliteRow) -> Result<PatientRecord, ArchiveError> {
    Ok(PatientRecord {
        pk: r.try_get(0)?,
        patient_id: r.try_get(1)?,
        issuer: r.try_get(2)?,
        name: r.try_get(3)?,
        birth_date: r.try_get(4)?,
        sex: r.try_get(5)?,
    })
}

impl Catalog {
    /// One page: how many rows of `from` pass `c`, and the rows
    /// `(limit, offset)` of them in `order`, each read by `read`.
    async fn page<T>(
        &self,
        mut c: Conditions,
        columns: &str,
        from: &str,
        order: &str,
        (limit, offset): (i64, i64),
        read: fn(&SqliteRow) -> Result<T, ArchiveError>,
    ) -> Result<Page<T>, ArchiveError> {
        let filter = c.sql();
        let count_sql = format!("SELECT COUNT(*) FROM {from}{filter}");
        let total: i64 = bound!(sqlx::query_scalar(&count_sql), &c.binds)
            .fetch_one(&self.reader)
            .await?;
        let limit = c.int(limit);
        let offset = c.int(offset);
        let sql = format!(
            "SELECT {columns} FROM {from}{filter} ORDER BY {order} LIMIT {limit} OFFSET {offset}"
        );
        let rows = bound!(sqlx::query(&sql), &c.binds)
            .fetch_all(&self.reader)
            .await?;
        let items = rows.iter().map(read).collect::<Result<Vec<_>, _>>()?;
        Ok(Page { total, items })
    }

    /// One page of reports matching `search`, oldest row first, each with
    /// its results' ids.
    pub async fn fhir_reports(
        &self,
        search: &ResultSearch,
    ) -> Result<Page<ReportRecord>, ArchiveError> {
        let mut c = Conditions::default();
        c.result_search("r", search, "service_code", "service_system");
        let mut page = self
            .page(
                c,
                &report_columns(),
                REPORTS_FROM,
                "r.id",
                (search.limit, search.offset),
                report_of,
            )
            .await?;
        self.attach_results(&mut page.items).await?;
        Ok(page)
    }

    /// One report by row id.
    pub async fn fhir_report(&self, id: i64) -> Result<Option<ReportRecord>, ArchiveError> {
        let page = self
            .fhir_reports(&ResultSearch {
                ids: vec![id],
                limit: 1,
                ..ResultSearch::default()
            })
            .await?;
        Ok(page.items.into_iter().next())
    }

    /// The reports recorded from one message, in the order it held them.
    pub async fn fhir_message_reports(
        &self,
        message_id: i64,
    ) -> Result<Vec<ReportRecord>, ArchiveError> {
        let sql = format!(
            "SELECT {} FROM {REPORTS_FROM} WHERE r.message_id = $1 ORDER BY r.id",
            report_columns()
        );
        let rows = sqlx::query(&sql)
            .bind(message_id)
            .fetch_all(&self.reader)
            .await?;
        let mut items = rows.iter().map(report_of).collect::<Result<Vec<_>, _>>()?;
        self.attach_results(&mut items).await?;
        Ok(items)
    }

    async fn attach_results(&self, reports: &mut [ReportRecord]) -> Result<(), ArchiveError> {
        if reports.is_empty() {
            return Ok(());
        }
        let mut c = Conditions::default();
        let ids: Vec<i64> = reports.iter().map(|r| r.report.id).collect();
        c.ints_in("report_id", &ids);
        let sql = format!(
            "SELECT id, report_id FROM observations{} ORDER BY id",
            c.sql()
        );
        let rows = bound!(sqlx::query(&sql), &c.binds)
            .fetch_all(&self.reader)
            .await?;
        for row in rows {
            let (id, report_id): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
            if let Some(r) = reports.iter_mut().find(|r| r.report.id == report_id) {
                r.result_ids.push(id);
            }
        }
        Ok(())
    }

    /// One page of results matching `search`, oldest row first.
    pub async fn fhir_observations(
        &self,
        search: &ResultSearch,
    ) -> Result<Page<ObservationRecord>, ArchiveError> {
        let mut c = Conditions::default();
        c.result_search("o", search, "code", "code_system");
        if search.current_only {
            c.push("o.superseded_by IS NULL".into());
        }
        self.page(
            c,
            &observation_columns(),
            OBSERVATIONS_FROM,
            "o.id",
            (search.limit, search.offset),
            observation_of,
        )
        .await
    }

    /// One result by row id, superseded or not.
    pub async fn fhir_observation(
        &self,
        id: i64,
    ) -> Result<Option<ObservationRecord>, ArchiveError> {
        let page = self
            .fhir_observations(&ResultSearch {
                ids: vec![id],
                limit: 1,
                ..ResultSearch::default()
            })
            .await?;
        Ok(page.items.into_iter().next())
    }

    /// One page of patients matching `search`, by row id.
    pub async fn fhir_patients(
        &self,
        search: &PatientSearch,
    ) -> Result<Page<PatientRecord>, ArchiveError> {
        let mut c = Conditions::default();
        c.ints_in("p.id", &search.ids);
        c.identifiers(&search.identifiers);
        if let Some(scope) = &search.scope {
            c.texts_in("p.patient_id", scope);
        }
        self.page(
            c,
            PATIENT_COLUMNS,
            "patients p",
            "p.id",
            (search.limit, search.offset),
            patient_of,
        )
        .await
    }

    /// One patient by row id.
    pub async fn fhir_patient(&self, pk: i64) -> Result<Option<PatientRecord>, ArchiveError> {
        let page = self
            .fhir_patients(&PatientSearch {
                ids: vec![pk],
                limit: 1,
                ..PatientSearch::default()
            })
            .await?;
        Ok(page.items.into_iter().next())
    }

    /// Counts of messages, reports and results (to check that a refused
    /// message left nothing behind).
    pub async fn result_counts(&self) -> Result<(i64, i64, i64), ArchiveError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM messages), (SELECT COUNT(*) FROM reports), \
             (SELECT COUNT(*) FROM observations)",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
    }
}
