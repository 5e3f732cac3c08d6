//! Query translation (PS3.4 C.2.2.2 matching onto tantivy queries) and the
//! newest-first collector.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::Bound;

use pacs_archive::query::{Attribute, Level, MatchKind, Matcher, Query};
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{Column, StrColumn};
use tantivy::query::{
    BooleanQuery, FuzzyTermQuery, Occur, Query as TantivyQuery, RangeQuery, RegexQuery, TermQuery,
    TermSetQuery,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocAddress, DocId, Score, SegmentOrdinal, SegmentReader, Term};

use crate::IndexError;
use crate::fold::{fold, name_tokens, normalize_date, normalize_time};
use crate::schema::{DocKind, Fields, words_analyzer};

/// How an attribute is held in the index.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// A raw, case-sensitive string field.
    Raw(Field),
    /// A DA field (values without separators).
    Date(Field),
    /// A TM field (values without `:`).
    Time(Field),
    /// A person name: folded whole values and folded components.
    Name { whole: Field, parts: Field },
    /// ModalitiesInStudy: one value per modality.
    Modalities(Field),
}

fn target(f: &Fields, a: &Attribute) -> Option<Target> {
    Some(match a.keyword {
        "StudyInstanceUID" => Target::Raw(f.study_uid),
        "PatientName" => Target::Name {
            whole: f.patient_name,
            parts: f.patient_name_parts,
        },
        "ReferringPhysicianName" => Target::Name {
            whole: f.referring_physician,
            parts: f.referring_physician_parts,
        },
        "PatientID" => Target::Raw(f.patient_id),
        "IssuerOfPatientID" => Target::Raw(f.issuer),
        "PatientBirthDate" => Target::Date(f.birth_date),
        "PatientSex" => Target::Raw(f.sex),
        "StudyDate" => Target::Date(f.study_date),
        "StudyTime" => Target::Time(f.study_time),
        "AccessionNumber" => Target::Raw(f.accession_number),
        "StudyID" => Target::Raw(f.study_id),
        "StudyDescription" => Target::Raw(f.study_description),
        "ModalitiesInStudy" => Target::Modalities(f.modality),
        _ => return None,
    })
}

/// Whether the index can answer `query`: a study-level query whose every
/// condition is on a patient- or study-level attribute the index holds.
/// Callers fall back to the catalog's SQL otherwise.
pub fn can_answer(query: &Query) -> bool {
    query.level == Level::Study
        && query.conditions.iter().all(|c| {
            c.attribute.level <= Level::Study
                && c.attribute.kind != MatchKind::Computed
                && INDEXED_KEYWORDS.contains(&c.attribute.keyword)
        })
}

/// The attributes the study index can match (those [`target`] maps).
const INDEXED_KEYWORDS: &[&str] = &[
    "StudyInstanceUID",
    "PatientName",
    "ReferringPhysicianName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ModalitiesInStudy",
];

/// A DICOM wildcard pattern (`*`, `?`) as an anchored tantivy regex.
fn wildcard_regex(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    for c in pattern.chars() {
        match c {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            // regex-syntax's meta characters (escaping them is always valid).
            '\\' | '.' | '+' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$' | '#' | '&'
            | '-' | '~' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

fn term_query(field: Field, value: &str) -> Box<dyn TantivyQuery> {
    Box::new(TermQuery::new(
        Term::from_field_text(field, value),
        IndexRecordOption::Basic,
    ))
}

fn any_of(field: Field, values: impl IntoIterator<Item = String>) -> Box<dyn TantivyQuery> {
    Box::new(TermSetQuery::new(
        values.into_iter().map(|v| Term::from_field_text(field, &v)),
    ))
}

fn regex_query(field: Field, pattern: &str) -> Result<Box<dyn TantivyQuery>, IndexError> {
    RegexQuery::from_pattern(&wildcard_regex(pattern), field)
        .map(|q| Box::new(q) as Box<dyn TantivyQuery>)
        .map_err(|e| IndexError::Query(format!("wildcard {pattern:?}: {e}")))
}

/// Inclusive string range; `None` when both ends are open (universal).
fn range_query(
    field: Field,
    from: Option<String>,
    to: Option<String>,
) -> Option<Box<dyn TantivyQuery>> {
    if from.is_none() && to.is_none() {
        return None;
    }
    let bound = |v: Option<String>| match v {
        Some(v) => Bound::Included(Term::from_field_text(field, &v)),
        None => Bound::Unbounded,
    };
    Some(Box::new(RangeQuery::new(bound(from), bound(to))))
}

/// Levenshtein distance allowed for a name component of `len` characters.
fn fuzzy_distance(len: usize) -> u8 {
    match len {
        0..=2 => 0,
        3..=5 => 1,
        _ => 2,
    }
}

/// Every component of the (folded) value matches some name component
/// within the fuzzy distance (wildcard components by regex).
fn fuzzy_name(parts: Field, folded: &str) -> Result<Option<Box<dyn TantivyQuery>>, IndexError> {
    let mut clauses: Vec<(Occur, Box<dyn TantivyQuery>)> = Vec::new();
    for token in name_tokens(folded) {
        if token.chars().all(|c| c == '*') {
            continue;
        }
        let q: Box<dyn TantivyQuery> = if token.contains(['*', '?']) {
            regex_query(parts, token)?
        } else {
            let distance = fuzzy_distance(token.chars().count());
            if distance == 0 {
                term_query(parts, token)
            } else {
                Box::new(FuzzyTermQuery::new(
                    Term::from_field_text(parts, token),
                    distance,
                    true,
                ))
            }
        };
        clauses.push((Occur::Must, q));
    }
    Ok(
        (!clauses.is_empty())
            .then(|| Box::new(BooleanQuery::new(clauses)) as Box<dyn TantivyQuery>),
    )
}

fn condition_query(
    t: Target,
    a: &Attribute,
    m: &Matcher,
    fuzzy: bool,
) -> Result<Option<Box<dyn TantivyQuery>>, IndexError> {
    let unsupported = || {
        Err(IndexError::Query(format!(
            "{} cannot be matched with {m:?}",
            a.keyword
        )))
    };
    if m.is_universal() {
        return Ok(None);
    }
    Ok(match t {
        Target::Raw(field) => match m {
            Matcher::Universal => None,
            Matcher::Single(v) => Some(term_query(field, v)),
            Matcher::Wildcard(p) => Some(regex_query(field, p)?),
            Matcher::UidList(list) => Some(any_of(field, list.iter().cloned())),
            Matcher::Range { from, to } => range_query(field, from.clone(), to.clone()),
        },
        Target::Date(field) | Target::Time(field) => {
            let is_time = matches!(t, Target::Time(_));
            let norm = |v: &str| {
                if is_time {
                    normalize_time(v)
                } else {
                    normalize_date(v)
                }
            };
            match m {
                Matcher::Universal => None,
                Matcher::Single(v) => Some(term_query(field, &norm(v))),
                Matcher::Wildcard(p) => Some(regex_query(field, &norm(p))?),
                Matcher::UidList(list) => Some(any_of(field, list.iter().map(|v| norm(v)))),
                Matcher::Range { from, to } => {
                    let from = from.as_deref().map(norm);
                    // A time's upper end compares as a prefix: `1200`
                    // includes 12:00:59.999999.
                    let to = to.as_deref().map(|v| {
                        let v = norm(v);
                        if is_time { format!("{v}\u{7f}") } else { v }
                    });
                    range_query(field, from, to)
                }
            }
        }
        Target::Name { whole, parts } => {
            let base: Box<dyn TantivyQuery> = match m {
                Matcher::Universal => return Ok(None),
                Matcher::Single(v) => term_query(whole, &fold(v)),
                Matcher::Wildcard(p) => regex_query(whole, &fold(p))?,
                Matcher::UidList(list) => any_of(whole, list.iter().map(|v| fold(v))),
                Matcher::Range { .. } => return unsupported(),
            };
            let fuzzy_query = match (fuzzy, m) {
                (true, Matcher::Single(v) | Matcher::Wildcard(v)) => fuzzy_name(parts, &fold(v))?,
                _ => None,
            };
            match fuzzy_query {
                Some(fq) => Some(Box::new(BooleanQuery::new(vec![
                    (Occur::Should, base),
                    (Occur::Should, fq),
                ]))),
                None => Some(base),
            }
        }
        Target::Modalities(field) => match m {
            Matcher::Universal => None,
            Matcher::Single(v) => Some(any_of(
                field,
                v.split('\\')
                    .map(|s| s.trim())
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            )),
            Matcher::Wildcard(p) => Some(regex_query(field, p)?),
            Matcher::UidList(list) => Some(any_of(field, list.iter().cloned())),
            Matcher::Range { .. } => return unsupported(),
        },
    })
}

/// The tantivy query of a study-level `query`.
pub fn translate(fields: &Fields, query: &Query) -> Result<Box<dyn TantivyQuery>, IndexError> {
    if query.level != Level::Study {
        return Err(IndexError::Query(format!(
            "the study index answers STUDY level queries, not {}",
            query.level.name()
        )));
    }
    // Study documents only.
    let mut clauses: Vec<(Occur, Box<dyn TantivyQuery>)> = vec![(
        Occur::Must,
        Box::new(TermQuery::new(
            Term::from_field_text(fields.kind, DocKind::Study.name()),
            IndexRecordOption::Basic,
        )),
    )];
    for c in &query.conditions {
        let a = c.attribute;
        let t = target(fields, a)
            .filter(|_| a.level <= Level::Study && a.kind != MatchKind::Computed)
            .ok_or_else(|| {
                IndexError::Query(format!("{} is not held by the study index", a.keyword))
            })?;
        if let Some(q) = condition_query(t, a, &c.matcher, query.fuzzy)? {
            clauses.push((Occur::Must, q));
        }
    }
    if let Some(text) = &query.report_text {
        for word in words(text) {
            clauses.push((
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(fields.report_text, &word),
                    IndexRecordOption::Basic,
                )),
            ));
        }
    }
    Ok(Box::new(BooleanQuery::new(clauses)))
}

/// The words of free text as the index holds them ([`crate::schema::WORDS`]).
pub fn words(text: &str) -> Vec<String> {
    let mut analyzer = words_analyzer();
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while let Some(token) = stream.next() {
        out.push(token.text.clone());
    }
    out
}

/// One candidate of a page: its sort key, UID and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub key: u64,
    pub uid: String,
    pub address: DocAddress,
}

impl Ord for Hit {
    /// Less is better: newer key first, then smaller UID.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .key
            .cmp(&self.key)
            .then_with(|| self.uid.cmp(&other.uid))
    }
}

impl PartialOrd for Hit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Counts every match and keeps the best `k` in newest-first order (study
/// date and time descending, StudyInstanceUID ascending), reading only fast
/// fields; UID strings are read only for each segment's survivors.
pub struct TopStudies {
    pub k: usize,
    pub sort_field: &'static str,
    pub uid_field: &'static str,
}

pub struct TopFruit {
    pub total: usize,
    /// Best first.
    pub hits: Vec<Hit>,
}

impl Collector for TopStudies {
    type Fruit = TopFruit;
    type Child = SegmentTop;

    fn for_segment(
        &self,
        segment_local_id: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<SegmentTop> {
        let fast = segment.fast_fields();
        Ok(SegmentTop {
            k: self.k,
            segment: segment_local_id,
            keys: fast.u64(self.sort_field)?,
            uids: fast.str(self.uid_field)?,
            heap: BinaryHeap::with_capacity(self.k.min(4096) + 1),
            total: 0,
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<TopFruit>) -> tantivy::Result<TopFruit> {
        let total = fruits.iter().map(|f| f.total).sum();
        let mut hits: Vec<Hit> = fruits.into_iter().flat_map(|f| f.hits).collect();
        hits.sort_unstable();
        hits.truncate(self.k);
        Ok(TopFruit { total, hits })
    }
}

pub struct SegmentTop {
    k: usize,
    segment: SegmentOrdinal,
    keys: Column<u64>,
    uids: Option<StrColumn>,
    heap: BinaryHeap<SegmentHit>,
    total: usize,
}

/// A candidate within one segment: term ordinals of a segment's UID column
/// are in UID order, so the ordinal stands in for the UID until harvest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SegmentHit {
    key: u64,
    uid_ord: u64,
    doc: DocId,
}

impl Ord for SegmentHit {
    /// Less is better, as for [`Hit`].
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .key
            .cmp(&self.key)
            .then_with(|| self.uid_ord.cmp(&other.uid_ord))
            .then_with(|| self.doc.cmp(&other.doc))
    }
}

impl PartialOrd for SegmentHit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl SegmentCollector for SegmentTop {
    type Fruit = TopFruit;

    fn collect(&mut self, doc: DocId, _score: Score) {
        self.total += 1;
        if self.k == 0 {
            return;
        }
        let key = self.keys.first(doc).unwrap_or(0);
        if self.heap.len() >= self.k
            && let Some(worst) = self.heap.peek()
            && key < worst.key
        {
            return;
        }
        let uid_ord = self
            .uids
            .as_ref()
            .and_then(|u| u.ords().first(doc))
            .unwrap_or(u64::MAX);
        let hit = SegmentHit { key, uid_ord, doc };
        if self.heap.len() < self.k {
            self.heap.push(hit);
        } else if let Some(mut worst) = self.heap.peek_mut()
            && hit < *worst
        {
            *worst = hit;
        }
    }

    fn harvest(self) -> TopFruit {
        let top = self.heap.into_sorted_vec();
        // Resolve the survivors' UIDs in one sorted pass over the dictionary.
        let mut ords: Vec<u64> = top
            .iter()
            .map(|h| h.uid_ord)
            .filter(|&o| o != u64::MAX)
            .collect();
        ords.sort_unstable();
        ords.dedup();
        let mut names: Vec<String> = Vec::with_capacity(ords.len());
        if let Some(uids) = &self.uids {
            let resolved = uids.dictionary().sorted_ords_to_term_cb(&ords, |bytes| {
                names.push(String::from_utf8_lossy(bytes).into_owned());
            });
            if resolved.is_err() || names.len() != ords.len() {
                // Fall back to one lookup per ordinal.
                names = ords
                    .iter()
                    .map(|&o| {
                        let mut s = String::new();
                        let _ = uids.ord_to_str(o, &mut s);
                        s
                    })
                    .collect();
            }
        }
        let hits = top
            .into_iter()
            .map(|h| Hit {
                key: h.key,
                uid: ords
                    .binary_search(&h.uid_ord)
                    .ok()
                    .and_then(|i| names.get(i).cloned())
                    .unwrap_or_default(),
                address: DocAddress::new(self.segment, h.doc),
            })
            .collect();
        TopFruit {
            total: self.total,
            hits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_become_anchored_regexes() {
        assert_eq!(wildcard_regex("muller*"), "muller.*");
        assert_eq!(wildcard_regex("m?ller^j*"), "m.ller\\^j.*");
        assert_eq!(wildcard_regex("1.2.3*"), "1\\.2\\.3.*");
        assert_eq!(wildcard_regex("a(b)|[c]"), "a\\(b\\)\\|\\[c\\]");
    }

    /// Equal dates and times order by UID, across segments and pages.
    #[test]
    fn ties_order_by_uid_across_segments() {
        use tantivy::collector::Collector;

        let (schema, fields) = crate::schema::build_schema();
        let index = tantivy::Index::create_in_ram(schema);
        index
            .tokenizers()
            .register(crate::schema::WORDS, crate::schema::words_analyzer());
        let mut writer: tantivy::IndexWriter =
            index.writer_with_num_threads(1, 15_000_000).unwrap();
        // Three segments, tied UIDs interleaved between them, more ties per
        // segment than the smaller page sizes.
        let batches = [
            ["1.15", "1.03", "1.09", "1.12", "1.06", "1.21"],
            ["1.01", "1.13", "1.07", "1.04", "1.10", "1.20"],
            ["1.05", "1.11", "1.02", "1.14", "1.08", "1.00"],
        ];
        for batch in &batches {
            for uid in batch {
                let date = match *uid {
                    "1.21" | "1.20" => "20210101",
                    "1.00" => "20190101",
                    _ => "20200101",
                };
                let d = crate::StudyDoc {
                    study_instance_uid: (*uid).into(),
                    study_date: Some(date.into()),
                    study_time: Some("101500".into()),
                    ..Default::default()
                };
                writer
                    .add_document(crate::schema::to_document(&fields, &d, None).unwrap())
                    .unwrap();
            }
            writer.commit().unwrap();
        }
        let searcher = index.reader().unwrap().searcher();
        assert_eq!(searcher.segment_readers().len(), 3);
        let mut expected = vec!["1.20".to_owned(), "1.21".to_owned()];
        expected.extend((1..=15).map(|i| format!("1.{i:02}")));
        expected.push("1.00".to_owned());
        for k in 1..=expected.len() + 1 {
            let collector = TopStudies {
                k,
                sort_field: "sort_key",
                uid_field: "study_uid",
            };
            assert!(!collector.requires_scoring());
            let fruit = searcher
                .search(&tantivy::query::AllQuery, &collector)
                .unwrap();
            assert_eq!(fruit.total, expected.len());
            let uids: Vec<String> = fruit.hits.into_iter().map(|h| h.uid).collect();
            assert_eq!(uids, expected[..k.min(expected.len())], "k = {k}");
        }
    }

    #[test]
    fn fuzzy_distance_grows_with_length() {
        assert_eq!(fuzzy_distance(2), 0);
        assert_eq!(fuzzy_distance(5), 1);
        assert_eq!(fuzzy_distance(7), 2);
    }

    #[test]
    fn every_indexed_keyword_has_a_field() {
        let (_, fields) = crate::schema::build_schema();
        for k in INDEXED_KEYWORDS {
            let a = Attribute::by_keyword(k).unwrap();
            assert!(a.level <= Level::Study, "{k}");
            assert!(target(&fields, a).is_some(), "{k}");
        }
    }

    #[test]
    fn can_answer_only_study_level_keys() {
        let a = |k| Attribute::by_keyword(k).unwrap();
        let q = Query::new(Level::Study)
            .with(a("PatientName"), Matcher::Wildcard("x*".into()))
            .with(a("ModalitiesInStudy"), Matcher::Single("CT".into()));
        assert!(can_answer(&q));
        let q = Query::new(Level::Study).with(a("Modality"), Matcher::Single("CT".into()));
        assert!(!can_answer(&q));
        let q = Query::new(Level::Series);
        assert!(!can_answer(&q));
    }
}
