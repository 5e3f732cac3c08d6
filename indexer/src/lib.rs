#![doc = include_str!("../README.md")]

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pacs_archive::catalog::{Catalog, ReportRecord};
use pacs_archive::query::Query;
use tantivy::collector::Count;
use tantivy::query::TermQuery;
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

pub mod fold;
mod follower;
pub mod schema;
mod search;
pub mod text;

pub use schema::DocKind;
pub use search::can_answer;
pub use tantivy::TantivyError;
pub use text::{TextHit, TextPage, TextSearch};

use schema::{
    Fields, SCHEMA_VERSION, WORDS, build_schema, report_document, study_doc, to_document,
    words_analyzer,
};

/// The one error type of the indexer.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("catalog: {0}")]
    Catalog(#[from] pacs_archive::ArchiveError),
    #[error("query: {0}")]
    Query(String),
    #[error("index directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("index document: {0}")]
    Document(#[from] serde_json::Error),
    #[error("index task: {0}")]
    Task(String),
    #[error("the index is open read-only (another process writes it)")]
    ReadOnly,
}

/// One study as the index knows it: what a study-level QIDO or C-FIND
/// answer returns without touching the catalog (the catalog's own record,
/// with empty values as `None`).
pub use pacs_archive::catalog::StudyRecord as StudyDoc;

/// One page of a study search.
#[derive(Debug, Clone, Default)]
pub struct StudyPage {
    /// Matches in all (for paging).
    pub total: usize,
    pub studies: Vec<StudyDoc>,
}

/// What each commit records (the tantivy commit payload).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct CommitPayload {
    schema_version: u32,
    /// The last change-feed seq reflected in the commit.
    seq: i64,
}

/// Changes read from the feed per catalog round trip.
const CHANGE_BATCH: i64 = 2_000;
/// Changes applied between commits during a long catch-up.
const COMMIT_EVERY: u64 = 50_000;
/// Studies or reports read per catalog round trip during a rebuild.
const REBUILD_BATCH: i64 = 1_000;
/// Memory of the one indexing thread.
const WRITER_MEMORY: usize = 64_000_000;

/// The search index: one tantivy document per study and one per report or
/// lab panel, derived from the catalog and following its change feed.
/// Always rebuildable.
pub struct StudyIndex {
    inner: Arc<Inner>,
}

struct Inner {
    index: Index,
    fields: Fields,
    reader: IndexReader,
    /// The one writer (none when opened read-only); used only on blocking
    /// threads.
    writer: Mutex<Option<IndexWriter>>,
    /// The last change seq reflected in committed, searchable state.
    indexed_seq: AtomicI64,
    /// Commits since opening (each writes and syncs a segment).
    commits: AtomicU64,
    /// Serialises catch-ups and rebuilds (read feed -> write -> commit).
    apply: tokio::sync::Mutex<()>,
}

/// Whether a file in an index directory is one tantivy manages (and a
/// wipe may remove): its metadata, locks and segment files.
fn is_index_file(name: &str) -> bool {
    if matches!(
        name,
        "meta.json" | ".managed.json" | ".tantivy-meta.lock" | ".tantivy-writer.lock"
    ) {
        return true;
    }
    match name.split_once('.') {
        Some((stem, _)) => stem.len() == 32 && stem.bytes().all(|b| b.is_ascii_hexdigit()),
        None => false,
    }
}

fn wipe(dir: &Path) -> Result<(), IndexError> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if entry.file_type()?.is_file() && name.to_str().is_some_and(is_index_file) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn read_payload(index: &Index) -> Option<CommitPayload> {
    let metas = index.load_metas().ok()?;
    serde_json::from_str(metas.payload.as_deref()?).ok()
}

impl StudyIndex {
    /// Open the index in `dir` for searching only, while another process
    /// (`pacs serve`) writes it: it must exist with this schema version.
    pub fn open_read_only(dir: &Path) -> Result<Arc<Self>, IndexError> {
        let index = Index::open_in_dir(dir)?;
        let (schema, fields) = build_schema();
        let seq = match read_payload(&index) {
            Some(p) if p.schema_version == SCHEMA_VERSION && index.schema() == schema => p.seq,
            _ => {
                return Err(IndexError::Query(format!(
                    "the index in {} has another schema version: run `pacs reindex`",
                    dir.display()
                )));
            }
        };
        index.tokenizers().register(WORDS, words_analyzer());
        let reader: IndexReader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Arc::new(StudyIndex {
            inner: Arc::new(Inner {
                index,
                fields,
                reader,
                writer: Mutex::new(None),
                indexed_seq: AtomicI64::new(seq),
                commits: AtomicU64::new(0),
                apply: tokio::sync::Mutex::new(()),
            }),
        }))
    }

    /// Open the index in `dir`, creating it if missing. An index written by
    /// another schema version (or never committed by this code) is wiped and
    /// recreated empty, with indexed seq 0: the next catch-up rebuilds it.
    /// Fails with a lock error while another process has it open for writing.
    pub fn open(dir: &Path) -> Result<Arc<Self>, IndexError> {
        std::fs::create_dir_all(dir)?;
        let (schema, fields) = build_schema();
        let mut seq = 0;
        let index = if dir.join("meta.json").exists() {
            let existing = Index::open_in_dir(dir)?;
            match read_payload(&existing) {
                Some(p) if p.schema_version == SCHEMA_VERSION && existing.schema() == schema => {
                    seq = p.seq;
                    Some(existing)
                }
                other => {
                    tracing::warn!(
                        dir = %dir.display(),
                        found = ?other.map(|p| p.schema_version),
                        expected = SCHEMA_VERSION,
                        "study index has another schema version: recreating it"
                    );
                    drop(existing);
                    wipe(dir)?;
                    None
                }
            }
        } else {
            None
        };
        let fresh = index.is_none();
        let index = match index {
            Some(index) => index,
            None => Index::create_in_dir(dir, schema)?,
        };
        index.tokenizers().register(WORDS, words_analyzer());
        let writer: IndexWriter = index.writer_with_num_threads(1, WRITER_MEMORY)?;
        let reader: IndexReader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let inner = Inner {
            index,
            fields,
            reader,
            writer: Mutex::new(Some(writer)),
            indexed_seq: AtomicI64::new(seq),
            commits: AtomicU64::new(0),
            apply: tokio::sync::Mutex::new(()),
        };
        if fresh {
            inner.commit(&mut *inner.lock_writer()?, 0)?;
        }
        tracing::info!(dir = %dir.display(), indexed_seq = seq, "study index open");
        Ok(Arc::new(StudyIndex {
            inner: Arc::new(inner),
        }))
    }

    /// The last change seq reflected in committed, searchable state.
    pub fn indexed_seq(&self) -> i64 {
        self.inner.indexed_seq.load(Ordering::Acquire)
    }

    /// Number of studies in the searchable state.
    /// Commits made since the index was opened (a metric: each commit
    /// writes and syncs a new segment).
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    pub fn num_studies(&self) -> u64 {
        self.count(DocKind::Study)
    }

    /// Number of documents of `kind` in the searchable state.
    pub fn count(&self, kind: DocKind) -> u64 {
        let query = TermQuery::new(
            Term::from_field_text(self.inner.fields.kind, kind.name()),
            IndexRecordOption::Basic,
        );
        self.inner
            .reader
            .searcher()
            .search(&query, &Count)
            .map_or(0, |n| n as u64)
    }

    /// Make the searchable state the newest committed one (for an index
    /// opened read-only while another process writes it).
    pub fn refresh(&self) -> Result<(), IndexError> {
        self.inner.reader.reload()?;
        if let Some(p) = read_payload(&self.inner.index) {
            self.inner.indexed_seq.store(p.seq, Ordering::Release);
        }
        Ok(())
    }

    /// Apply every change after [`indexed_seq`](Self::indexed_seq): each
    /// touched study is re-read from the catalog once per batch and its
    /// document replaced. Commits (with the seq reached) and makes the
    /// result searchable; returns the number of changes applied.
    pub async fn catch_up(&self, catalog: &Catalog) -> Result<u64, IndexError> {
        let _apply = self.inner.apply.lock().await;
        let mut seq = self.indexed_seq();
        let mut applied = 0u64;
        let mut uncommitted = 0u64;
        let result: Result<(), IndexError> = async {
            loop {
                let changes = catalog.changes_since(seq, CHANGE_BATCH).await?;
                let Some(last) = changes.last().map(|c| c.seq) else {
                    break;
                };
                let mut uids: Vec<String> = changes
                    .iter()
                    .filter_map(|c| c.study_instance_uid.clone())
                    .collect();
                uids.sort_unstable();
                uids.dedup();
                let mut report_ids: Vec<i64> = changes.iter().filter_map(|c| c.report_id).collect();
                report_ids.sort_unstable();
                report_ids.dedup();
                let docs = documents(catalog, &uids, &report_ids).await?;
                uncommitted += changes.len() as u64;
                // A short batch is the end of the feed for now: stop and
                // commit once below. Going on while changes trickle in
                // would commit a tiny segment for each of them (under a
                // steady C-STORE stream, one per instance).
                let at_end = (changes.len() as i64) < CHANGE_BATCH;
                let commit = (uncommitted >= COMMIT_EVERY && !at_end).then_some(last);
                self.blocking(move |inner| {
                    let mut writer = inner.lock_writer()?;
                    // Studies and reports no longer in the catalog are removed too.
                    for uid in &uids {
                        writer.delete_term(Term::from_field_text(inner.fields.study_uid, uid));
                    }
                    for &id in &report_ids {
                        writer.delete_term(Term::from_field_u64(
                            inner.fields.report_id,
                            id.max(0) as u64,
                        ));
                    }
                    docs.add_to(inner, &writer)?;
                    if let Some(seq) = commit {
                        inner.commit(&mut writer, seq)?;
                    }
                    Ok(())
                })
                .await?;
                if commit.is_some() {
                    uncommitted = 0;
                }
                seq = last;
                applied += changes.len() as u64;
                if at_end {
                    break;
                }
            }
            if uncommitted > 0 {
                self.blocking(move |inner| inner.commit(&mut *inner.lock_writer()?, seq))
                    .await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.rollback().await;
            return Err(e);
        }
        if applied > 0 {
            tracing::debug!(applied, indexed_seq = seq, "study index caught up");
        }
        Ok(applied)
    }

    /// Follow the catalog's change feed in a background task: catch up,
    /// then wait for the catalog's commit notification or 200 ms. Errors
    /// are logged and retried with backoff. Abort the handle to stop it.
    pub fn spawn_follower(self: &Arc<Self>, catalog: Catalog) -> tokio::task::JoinHandle<()> {
        tokio::spawn(follower::follow(Arc::clone(self), catalog))
    }

    /// Replace the whole index with the catalog's studies, in batches,
    /// calling `progress(done, total)` after each; commits once at the end
    /// with the change seq read before the first batch (changes after it
    /// are applied again by the next catch-up, which is harmless). Searches
    /// see the old state until the commit. Returns the number of studies.
    pub async fn rebuild(
        &self,
        catalog: &Catalog,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<u64, IndexError> {
        let _apply = self.inner.apply.lock().await;
        let result: Result<u64, IndexError> = async {
            let seq = catalog.last_change_seq().await?;
            let total =
                (catalog.study_count().await?.max(0) + catalog.report_count().await?.max(0)) as u64;
            progress(0, total);
            self.blocking(|inner| {
                inner
                    .lock_writer()?
                    .delete_query(Box::new(tantivy::query::AllQuery))?;
                Ok(())
            })
            .await?;
            let mut done = 0u64;
            let mut after: Option<String> = None;
            loop {
                let uids = catalog
                    .study_uids_after(after.as_deref(), REBUILD_BATCH)
                    .await?;
                let Some(last) = uids.last().cloned() else {
                    break;
                };
                let docs = documents(catalog, &uids, &[]).await?;
                done += docs.len() as u64;
                self.blocking(move |inner| docs.add_to(inner, &*inner.lock_writer()?))
                    .await?;
                progress(done, total.max(done));
                after = Some(last);
            }
            let mut after_report = 0;
            loop {
                let ids = catalog
                    .report_ids_after(after_report, REBUILD_BATCH)
                    .await?;
                let Some(&last) = ids.last() else {
                    break;
                };
                let docs = documents(catalog, &[], &ids).await?;
                done += docs.len() as u64;
                self.blocking(move |inner| docs.add_to(inner, &*inner.lock_writer()?))
                    .await?;
                progress(done, total.max(done));
                after_report = last;
            }
            self.blocking(move |inner| inner.commit(&mut *inner.lock_writer()?, seq))
                .await?;
            tracing::info!(documents = done, indexed_seq = seq, "search index rebuilt");
            Ok(done)
        }
        .await;
        if result.is_err() {
            self.rollback().await;
        }
        result
    }

    /// Search studies (a STUDY level query; see [`can_answer`]): newest
    /// first (study date and time descending, then StudyInstanceUID), the
    /// page `offset..offset + limit`, and the number of all matches.
    pub fn search(
        &self,
        query: &Query,
        limit: usize,
        offset: usize,
    ) -> Result<StudyPage, IndexError> {
        let inner = &self.inner;
        let tq = search::translate(&inner.fields, query)?;
        let searcher = inner.reader.searcher();
        let collector = search::TopStudies {
            k: offset.saturating_add(limit),
            sort_field: "sort_key",
            uid_field: "study_uid",
        };
        let fruit = searcher.search(&*tq, &collector)?;
        let mut studies = Vec::with_capacity(limit.min(fruit.hits.len()));
        for hit in fruit.hits.iter().skip(offset) {
            studies.push(inner.load(&searcher, hit.address)?);
        }
        Ok(StudyPage {
            total: fruit.total,
            studies,
        })
    }

    /// The indexed study with this StudyInstanceUID, if any.
    pub fn study(&self, study_instance_uid: &str) -> Result<Option<StudyDoc>, IndexError> {
        let inner = &self.inner;
        let searcher = inner.reader.searcher();
        let query = TermQuery::new(
            Term::from_field_text(inner.fields.study_uid, study_instance_uid),
            IndexRecordOption::Basic,
        );
        let collector = search::TopStudies {
            k: 1,
            sort_field: "sort_key",
            uid_field: "study_uid",
        };
        let fruit = searcher.search(&query, &collector)?;
        match fruit.hits.first() {
            Some(hit) => Ok(Some(inner.load(&searcher, hit.address)?)),
            None => Ok(None),
        }
    }

    /// Run writer work on a blocking thread.
    async fn blocking<T, F>(&self, work: F) -> Result<T, IndexError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, IndexError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|e| IndexError::Task(e.to_string()))?
    }

    /// Drop uncommitted writes after a failure.
    async fn rollback(&self) {
        let outcome = self
            .blocking(|inner| {
                inner.lock_writer()?.rollback()?;
                Ok(())
            })
            .await;
        if let Err(e) = outcome {
            tracing::error!(error = %e, "study index rollback failed");
        }
    }
}

/// The locked writer of an index opened for writing.
struct WriterGuard<'a>(MutexGuard<'a, Option<IndexWriter>>);

impl Deref for WriterGuard<'_> {
    type Target = IndexWriter;
    fn deref(&self) -> &IndexWriter {
        self.0.as_ref().expect("checked by lock_writer")
    }
}

impl DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut IndexWriter {
        self.0.as_mut().expect("checked by lock_writer")
    }
}

/// The documents of a batch of studies and reports, read from the catalog.
struct Documents {
    studies: Vec<(StudyDoc, Option<String>)>,
    reports: Vec<ReportRecord>,
}

impl Documents {
    fn len(&self) -> usize {
        self.studies.len() + self.reports.len()
    }

    fn add_to(&self, inner: &Inner, writer: &IndexWriter) -> Result<(), IndexError> {
        for (study, text) in &self.studies {
            writer.add_document(to_document(&inner.fields, study, text.as_deref())?)?;
        }
        for report in &self.reports {
            writer.add_document(report_document(&inner.fields, report)?)?;
        }
        Ok(())
    }
}

/// Read the studies with `uids` (with their report text) and the reports
/// with `report_ids` that still exist.
async fn documents(
    catalog: &Catalog,
    uids: &[String],
    report_ids: &[i64],
) -> Result<Documents, IndexError> {
    let records = catalog.study_records(uids).await?;
    let mut texts: HashMap<String, String> = if records.is_empty() {
        HashMap::new()
    } else {
        catalog.study_report_texts(uids).await?
    };
    let studies = records
        .iter()
        .map(|r| (study_doc(r), texts.remove(&r.study_instance_uid)))
        .collect();
    let reports = if report_ids.is_empty() {
        Vec::new()
    } else {
        catalog.report_records(report_ids).await?
    };
    Ok(Documents { studies, reports })
}

impl Inner {
    fn lock_writer(&self) -> Result<WriterGuard<'_>, IndexError> {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Err(IndexError::ReadOnly);
        }
        Ok(WriterGuard(guard))
    }

    /// Commit with `seq` in the payload and make it searchable.
    fn commit(&self, writer: &mut IndexWriter, seq: i64) -> Result<(), IndexError> {
        let payload = serde_json::to_string(&CommitPayload {
            schema_version: SCHEMA_VERSION,
            seq,
        })?;
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        self.reader.reload()?;
        self.indexed_seq.store(seq, Ordering::Release);
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn load(
        &self,
        searcher: &tantivy::Searcher,
        address: tantivy::DocAddress,
    ) -> Result<StudyDoc, IndexError> {
        let doc: TantivyDocument = searcher.doc(address)?;
        let json = doc
            .get_first(self.fields.doc)
            .and_then(|v| v.as_str())
            .ok_or_else(|| IndexError::Query("an indexed study has no stored document".into()))?;
        Ok(serde_json::from_str(json)?)
    }
}
