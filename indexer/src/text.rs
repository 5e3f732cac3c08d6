//! Full-text search over every kind of document: studies (patient name,
//! description, the text of their reports), reports (title, narrative
//! text) and lab panels (test names and codes), with filters on patient,
//! date range, modality and kind.

use std::ops::Bound;

use pacs_archive::catalog::ReportRecord;
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{
    AllQuery, BooleanQuery, Occur, Query as TantivyQuery, QueryParser, RangeQuery, TermQuery,
    TermSetQuery,
};
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::snippet::SnippetGenerator;
use tantivy::{DocAddress, Order, TantivyDocument, Term};

use crate::fold::normalize_date;
use crate::schema::DocKind;
use crate::{IndexError, StudyDoc, StudyIndex};

/// Longest query text accepted.
pub const MAX_QUERY_CHARS: usize = 1_000;
/// Characters of a hit's snippet.
const SNIPPET_CHARS: usize = 200;

/// A full-text search with its filters and page.
#[derive(Debug, Clone, Default)]
pub struct TextSearch {
    /// The query text: words (all must match), `"phrases"`, `OR`, `-word`;
    /// empty: everything that passes the filters, newest first.
    pub q: String,
    /// Only these kinds (empty: all).
    pub kinds: Vec<DocKind>,
    /// Only documents of these Patient IDs (`None`: any patient). Both a
    /// filter and how a patient-scoped caller is held to its own records.
    pub patient_ids: Option<Vec<String>>,
    /// Inclusive `YYYYMMDD` bounds on the study date or the report's
    /// observation date.
    pub date_from: Option<String>,
    pub date_to: Option<String>,
    /// Only studies with (or reports on a study with) this modality.
    pub modality: Option<String>,
    pub limit: usize,
    pub offset: usize,
}

/// One hit: a study or a report, with a highlighted snippet of the text
/// that matched.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TextHit {
    pub kind: DocKind,
    pub score: f32,
    /// HTML: the matched words in `<b>`, everything else escaped.
    pub snippet: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub study: Option<StudyDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<ReportRecord>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TextPage {
    /// Matches in all (for paging).
    pub total: usize,
    pub hits: Vec<TextHit>,
}

fn term_query(field: tantivy::schema::Field, value: &str) -> Box<dyn TantivyQuery> {
    Box::new(TermQuery::new(
        Term::from_field_text(field, value),
        IndexRecordOption::Basic,
    ))
}

impl StudyIndex {
    /// Run a full-text search: best matches first (newest first without
    /// query text).
    pub fn search_text(&self, search: &TextSearch) -> Result<TextPage, IndexError> {
        let inner = &self.inner;
        let f = &inner.fields;
        let q = search.q.trim();
        if q.chars().count() > MAX_QUERY_CHARS {
            return Err(IndexError::Query(format!(
                "the query text is longer than {MAX_QUERY_CHARS} characters"
            )));
        }
        let mut clauses: Vec<(Occur, Box<dyn TantivyQuery>)> = Vec::new();
        let text_query = if q.is_empty() {
            None
        } else {
            let mut parser = QueryParser::for_index(&inner.index, vec![f.text]);
            parser.set_conjunction_by_default();
            // Free text typed by people: what does not parse as syntax
            // is searched as words rather than refused.
            let (parsed, _errors) = parser.parse_query_lenient(q);
            clauses.push((Occur::Must, parsed.box_clone()));
            Some(parsed)
        };
        if !search.kinds.is_empty() && search.kinds.len() < DocKind::ALL.len() {
            let terms = search
                .kinds
                .iter()
                .map(|k| Term::from_field_text(f.kind, k.name()));
            clauses.push((Occur::Must, Box::new(TermSetQuery::new(terms))));
        }
        if let Some(ids) = &search.patient_ids {
            let terms = ids.iter().map(|id| Term::from_field_text(f.patient_id, id));
            clauses.push((Occur::Must, Box::new(TermSetQuery::new(terms))));
        }
        if search.date_from.is_some() || search.date_to.is_some() {
            let bound = |d: &Option<String>| match d {
                Some(d) => Bound::Included(Term::from_field_text(f.study_date, &normalize_date(d))),
                None => Bound::Unbounded,
            };
            clauses.push((
                Occur::Must,
                Box::new(RangeQuery::new(
                    bound(&search.date_from),
                    bound(&search.date_to),
                )),
            ));
        }
        if let Some(m) = &search.modality {
            clauses.push((Occur::Must, term_query(f.modality, m)));
        }
        let query: Box<dyn TantivyQuery> = if clauses.is_empty() {
            Box::new(AllQuery)
        } else {
            Box::new(BooleanQuery::new(clauses))
        };
        let searcher = inner.reader.searcher();
        let limit = search.limit.max(1);
        let addresses: Vec<(f32, DocAddress)> = if text_query.is_some() {
            let top = TopDocs::with_limit(limit)
                .and_offset(search.offset)
                .order_by_score();
            searcher.search(&*query, &top)?
        } else {
            let top = TopDocs::with_limit(limit)
                .and_offset(search.offset)
                .order_by_fast_field::<u64>("sort_key", Order::Desc);
            searcher
                .search(&*query, &top)?
                .into_iter()
                .map(|(_, a)| (0.0, a))
                .collect()
        };
        let total = searcher.search(&*query, &Count)?;
        let snippets = match &text_query {
            Some(tq) => {
                let mut generator = SnippetGenerator::create(&searcher, &**tq, f.text)?;
                generator.set_max_num_chars(SNIPPET_CHARS);
                Some(generator)
            }
            None => None,
        };
        let mut hits = Vec::with_capacity(addresses.len());
        for (score, address) in addresses {
            let doc: TantivyDocument = searcher.doc(address)?;
            let kind = doc
                .get_first(f.kind)
                .and_then(|v| v.as_str())
                .and_then(DocKind::parse)
                .ok_or_else(|| IndexError::Query("an indexed document has no kind".into()))?;
            let snippet = match &snippets {
                Some(generator) => generator.snippet_from_doc(&doc).to_html(),
                None => String::new(),
            };
            let json = doc
                .get_first(f.doc)
                .and_then(|v| v.as_str())
                .ok_or_else(|| IndexError::Query("an indexed document is not stored".into()))?;
            let (study, report) = match kind {
                DocKind::Study => (Some(serde_json::from_str(json)?), None),
                DocKind::Report | DocKind::Lab => (None, Some(serde_json::from_str(json)?)),
            };
            hits.push(TextHit {
                kind,
                score,
                snippet,
                study,
                report,
            });
        }
        Ok(TextPage { total, hits })
    }
}
