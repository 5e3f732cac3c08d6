//! The one query model of every front door (PS3.4 C.2.2.2 matching).
//!
//! C-FIND identifiers and QIDO-RS parameters are both parsed into a
//! [`Query`]: a level and, per key, a [`Matcher`]. The catalog turns a query
//! into SQL (series and instance levels, and C-FIND until the index answers),
//! the indexer into tantivy queries (patient and study levels). The rules for
//! reading a match value are written here once.

/// The query/retrieve level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Patient,
    Study,
    Series,
    Image,
}

impl Level {
    /// From the DICOM code string (`PATIENT`, `STUDY`, `SERIES`, `IMAGE`).
    pub fn parse(value: &str) -> Option<Level> {
        match value.trim() {
            "PATIENT" => Some(Level::Patient),
            "STUDY" => Some(Level::Study),
            "SERIES" => Some(Level::Series),
            "IMAGE" => Some(Level::Image),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Patient => "PATIENT",
            Level::Study => "STUDY",
            Level::Series => "SERIES",
            Level::Image => "IMAGE",
        }
    }

    /// The unique key of the level.
    pub fn unique_key(self) -> &'static Attribute {
        let tag = match self {
            Level::Patient => 0x0010_0020,
            Level::Study => 0x0020_000D,
            Level::Series => 0x0020_000E,
            Level::Image => 0x0008_0018,
        };
        Attribute::by_tag(tag).expect("unique keys are in the table")
    }
}

/// How a key's value is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    /// Single value or wildcard, case-sensitive.
    Text,
    /// Single value or wildcard, case-insensitive (and accent-insensitive in
    /// the index); fuzzy when asked.
    PersonName,
    /// Single value or a backslash (or comma, from QIDO) separated list.
    Uid,
    /// Single value or range (`from-to`, `from-`, `-to`).
    DateOrTime,
    /// A count the archive computes (NumberOfStudyRelated...): returned,
    /// never matched.
    Computed,
}

/// An attribute the archive can match and return.
#[derive(Debug)]
pub struct Attribute {
    /// `(group << 16) | element`.
    pub tag: u32,
    pub keyword: &'static str,
    /// The value representation, as its two-letter code.
    pub vr: &'static str,
    /// The lowest level this attribute belongs to.
    pub level: Level,
    pub kind: MatchKind,
    /// The catalog column (aliases: `p` patients, `st` studies, `se` series,
    /// `i` instances), or an expression for computed attributes.
    pub column: &'static str,
}

const fn attr(
    tag: u32,
    keyword: &'static str,
    vr: &'static str,
    level: Level,
    kind: MatchKind,
    column: &'static str,
) -> Attribute {
    Attribute {
        tag,
        keyword,
        vr,
        level,
        kind,
        column,
    }
}

use Level::{Image, Patient, Series, Study};
use MatchKind::{Computed, DateOrTime, PersonName, Text, Uid};

/// Every attribute the archive matches and returns, in tag order.
pub const ATTRIBUTES: &[Attribute] = &[
    attr(
        0x0008_0016,
        "SOPClassUID",
        "UI",
        Image,
        Uid,
        "i.sop_class_uid",
    ),
    attr(
        0x0008_0018,
        "SOPInstanceUID",
        "UI",
        Image,
        Uid,
        "i.sop_instance_uid",
    ),
    attr(
        0x0008_0020,
        "StudyDate",
        "DA",
        Study,
        DateOrTime,
        "st.study_date",
    ),
    attr(
        0x0008_0030,
        "StudyTime",
        "TM",
        Study,
        DateOrTime,
        "st.study_time",
    ),
    attr(
        0x0008_0050,
        "AccessionNumber",
        "SH",
        Study,
        Text,
        "st.accession_number",
    ),
    attr(0x0008_0060, "Modality", "CS", Series, Text, "se.modality"),
    attr(
        0x0008_0061,
        "ModalitiesInStudy",
        "CS",
        Study,
        Text,
        "(SELECT group_concat(DISTINCT m.modality) FROM series m WHERE m.study_instance_uid = st.study_instance_uid)",
    ),
    attr(
        0x0008_0090,
        "ReferringPhysicianName",
        "PN",
        Study,
        PersonName,
        "st.referring_physician_name",
    ),
    attr(
        0x0008_1030,
        "StudyDescription",
        "LO",
        Study,
        Text,
        "st.study_description",
    ),
    attr(
        0x0008_103E,
        "SeriesDescription",
        "LO",
        Series,
        Text,
        "se.series_description",
    ),
    attr(
        0x0010_0010,
        "PatientName",
        "PN",
        Patient,
        PersonName,
        "p.patient_name",
    ),
    attr(
        0x0010_0020,
        "PatientID",
        "LO",
        Patient,
        Text,
        "p.patient_id",
    ),
    attr(
        0x0010_0021,
        "IssuerOfPatientID",
        "LO",
        Patient,
        Text,
        "p.issuer_of_patient_id",
    ),
    attr(
        0x0010_0030,
        "PatientBirthDate",
        "DA",
        Patient,
        DateOrTime,
        "p.birth_date",
    ),
    attr(0x0010_0040, "PatientSex", "CS", Patient, Text, "p.sex"),
    attr(
        0x0018_0015,
        "BodyPartExamined",
        "CS",
        Series,
        Text,
        "se.body_part_examined",
    ),
    attr(
        0x0020_000D,
        "StudyInstanceUID",
        "UI",
        Study,
        Uid,
        "st.study_instance_uid",
    ),
    attr(
        0x0020_000E,
        "SeriesInstanceUID",
        "UI",
        Series,
        Uid,
        "se.series_instance_uid",
    ),
    attr(0x0020_0010, "StudyID", "SH", Study, Text, "st.study_id"),
    attr(
        0x0020_0011,
        "SeriesNumber",
        "IS",
        Series,
        Text,
        "CAST(se.series_number AS TEXT)",
    ),
    attr(
        0x0020_0013,
        "InstanceNumber",
        "IS",
        Image,
        Text,
        "CAST(i.instance_number AS TEXT)",
    ),
    attr(
        0x0020_1200,
        "NumberOfPatientRelatedStudies",
        "IS",
        Patient,
        Computed,
        "(SELECT COUNT(*) FROM studies c WHERE c.patient_pk = p.id)",
    ),
    attr(
        0x0020_1202,
        "NumberOfPatientRelatedSeries",
        "IS",
        Patient,
        Computed,
        "(SELECT COUNT(*) FROM series c JOIN studies cs ON cs.study_instance_uid = c.study_instance_uid WHERE cs.patient_pk = p.id)",
    ),
    attr(
        0x0020_1204,
        "NumberOfPatientRelatedInstances",
        "IS",
        Patient,
        Computed,
        "(SELECT COUNT(*) FROM instances c JOIN studies cs ON cs.study_instance_uid = c.study_instance_uid WHERE cs.patient_pk = p.id)",
    ),
    attr(
        0x0020_1206,
        "NumberOfStudyRelatedSeries",
        "IS",
        Study,
        Computed,
        "(SELECT COUNT(*) FROM series c WHERE c.study_instance_uid = st.study_instance_uid)",
    ),
    attr(
        0x0020_1208,
        "NumberOfStudyRelatedInstances",
        "IS",
        Study,
        Computed,
        "(SELECT COUNT(*) FROM instances c WHERE c.study_instance_uid = st.study_instance_uid)",
    ),
    attr(
        0x0020_1209,
        "NumberOfSeriesRelatedInstances",
        "IS",
        Series,
        Computed,
        "(SELECT COUNT(*) FROM instances c WHERE c.series_instance_uid = se.series_instance_uid)",
    ),
    attr(
        0x0028_0008,
        "NumberOfFrames",
        "IS",
        Image,
        Text,
        "CAST(i.number_of_frames AS TEXT)",
    ),
    attr(0x0028_0010, "Rows", "US", Image, Computed, "i.num_rows"),
    attr(
        0x0028_0011,
        "Columns",
        "US",
        Image,
        Computed,
        "i.num_columns",
    ),
];

impl Attribute {
    pub fn by_tag(tag: u32) -> Option<&'static Attribute> {
        ATTRIBUTES
            .binary_search_by_key(&tag, |a| a.tag)
            .ok()
            .map(|i| &ATTRIBUTES[i])
    }

    pub fn by_keyword(keyword: &str) -> Option<&'static Attribute> {
        ATTRIBUTES.iter().find(|a| a.keyword == keyword)
    }

    pub fn group(&self) -> u16 {
        (self.tag >> 16) as u16
    }

    pub fn element(&self) -> u16 {
        (self.tag & 0xFFFF) as u16
    }
}

/// How one key's value selects (PS3.4 C.2.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// Empty value, or only `*`: everything matches.
    Universal,
    /// Exact value (case-insensitive for person names).
    Single(String),
    /// A value with `*` (any run) and `?` (one character).
    Wildcard(String),
    /// An inclusive range; either end may be open. For times, an end
    /// without seconds includes the whole minute (the upper end is padded).
    Range {
        from: Option<String>,
        to: Option<String>,
    },
    /// Any of these UIDs.
    UidList(Vec<String>),
}

impl Matcher {
    /// Read a match value for an attribute of `kind`. Trailing spaces and
    /// NULs are padding; `\` separates list values; `uid_commas` also accepts
    /// `,` (QIDO-RS).
    pub fn parse(kind: MatchKind, raw: &str, uid_commas: bool) -> Matcher {
        let value = raw.trim_matches(|c: char| c == ' ' || c == '\0');
        if value.is_empty() || value.chars().all(|c| c == '*') {
            return Matcher::Universal;
        }
        match kind {
            MatchKind::Uid => {
                let list: Vec<String> = value
                    .split(|c| c == '\\' || (uid_commas && c == ','))
                    .map(|u| u.trim_matches(|c: char| c == ' ' || c == '\0'))
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect();
                match list.len() {
                    0 => Matcher::Universal,
                    1 => Matcher::Single(list.into_iter().next().unwrap_or_default()),
                    _ => Matcher::UidList(list),
                }
            }
            MatchKind::DateOrTime => match value.split_once('-') {
                Some((from, to)) => {
                    let from = (!from.trim().is_empty()).then(|| from.trim().to_owned());
                    let to = (!to.trim().is_empty()).then(|| to.trim().to_owned());
                    if from.is_none() && to.is_none() {
                        Matcher::Universal
                    } else {
                        Matcher::Range { from, to }
                    }
                }
                None => Matcher::Single(value.to_owned()),
            },
            MatchKind::Text | MatchKind::PersonName | MatchKind::Computed => {
                if value.contains('*') || value.contains('?') {
                    Matcher::Wildcard(value.to_owned())
                } else {
                    Matcher::Single(value.to_owned())
                }
            }
        }
    }

    pub fn is_universal(&self) -> bool {
        matches!(self, Matcher::Universal)
    }
}

/// One key with its matcher.
#[derive(Debug, Clone)]
pub struct Condition {
    pub attribute: &'static Attribute,
    pub matcher: Matcher,
}

/// A query at one level: the conditions to match (all of them), whether
/// person names may match fuzzily, and (study level) words the study's
/// report text must hold.
#[derive(Debug, Clone)]
pub struct Query {
    pub level: Level,
    pub conditions: Vec<Condition>,
    pub fuzzy: bool,
    /// Full text the study's reports must match (every word). The search
    /// index matches words (stemmed, case- and accent-insensitive); the
    /// catalog, answering only when the index cannot, matches each word as
    /// a case-insensitive substring.
    pub report_text: Option<String>,
}

impl Query {
    pub fn new(level: Level) -> Self {
        Query {
            level,
            conditions: Vec::new(),
            fuzzy: false,
            report_text: None,
        }
    }

    /// Add a condition (universal matchers are kept out: they select all).
    pub fn with(mut self, attribute: &'static Attribute, matcher: Matcher) -> Self {
        self.push(attribute, matcher);
        self
    }

    pub fn push(&mut self, attribute: &'static Attribute, matcher: Matcher) {
        if !matcher.is_universal() && attribute.kind != MatchKind::Computed {
            self.conditions.push(Condition { attribute, matcher });
        }
    }

    /// The condition on the attribute with `tag`, if any.
    pub fn condition(&self, tag: u32) -> Option<&Matcher> {
        self.conditions
            .iter()
            .find(|c| c.attribute.tag == tag)
            .map(|c| &c.matcher)
    }

    /// The SQL `WHERE` clause of the conditions (without the keyword) and its
    /// text binds (`$1`, `$2`... after those already in `binds`), or `None` when
    /// nothing is to be matched. Person names compare case- and
    /// accent-insensitively (Unicode, see [`fold_char`]), like [`matches`].
    pub fn sql_where(&self, binds: &mut Vec<String>) -> Option<String> {
        let mut parts = Vec::new();
        for c in &self.conditions {
            parts.push(sql_condition(c.attribute, &c.matcher, binds));
        }
        if let Some(text) = &self.report_text {
            for word in text.split_whitespace() {
                let pattern = format!("%{}%", word.to_lowercase().replace(['%', '_'], ""));
                binds.push(pattern);
                parts.push(format!(
                    "EXISTS (SELECT 1 FROM reports r WHERE r.study_instance_uid = st.study_instance_uid \
                     AND LOWER(r.report_text) LIKE ${})",
                    binds.len()
                ));
            }
        }
        (!parts.is_empty()).then(|| parts.join(" AND "))
    }
}

fn sql_condition(a: &Attribute, m: &Matcher, binds: &mut Vec<String>) -> String {
    let mut bind = |v: &str| {
        binds.push(v.to_owned());
        format!("${}", binds.len())
    };
    if a.keyword == "ModalitiesInStudy" {
        // Matches when any series of the study has one of the modalities.
        let inner = match m {
            Matcher::Wildcard(v) => format!("m.modality GLOB {}", bind(&v.replace('[', "[[]"))),
            Matcher::Single(v) => {
                let list: Vec<String> = v.split('\\').map(&mut bind).collect();
                format!("m.modality IN ({})", list.join(", "))
            }
            Matcher::UidList(list) => {
                let list: Vec<String> = list.iter().map(|v| bind(v)).collect();
                format!("m.modality IN ({})", list.join(", "))
            }
            Matcher::Universal | Matcher::Range { .. } => "1 = 1".to_owned(),
        };
        return format!(
            "EXISTS (SELECT 1 FROM series m WHERE m.study_instance_uid = st.study_instance_uid AND {inner})"
        );
    }
    let column = a.column;
    let folded = a.kind == MatchKind::PersonName;
    match m {
        Matcher::Universal => "1 = 1".to_owned(),
        // Person names: every letter becomes the GLOB class of the letters
        // that fold to the same character (see `fold_char`), so the match is
        // Unicode case- and accent-insensitive in plain SQL and agrees with
        // `matches`. SQLite's lower() folds ASCII only.
        Matcher::Single(v) if folded => format!("{column} GLOB {}", bind(&folded_glob(v, false))),
        Matcher::Wildcard(v) if folded => format!("{column} GLOB {}", bind(&folded_glob(v, true))),
        Matcher::Single(v) => format!("{column} = {}", bind(v)),
        Matcher::Wildcard(v) => {
            // DICOM wildcards are GLOB's; only `[` must be made literal.
            format!("{column} GLOB {}", bind(&v.replace('[', "[[]")))
        }
        Matcher::UidList(list) => {
            let list: Vec<String> = list.iter().map(|u| bind(u)).collect();
            format!("{column} IN ({})", list.join(", "))
        }
        Matcher::Range { from, to } => {
            let mut parts = Vec::new();
            if let Some(from) = from {
                parts.push(format!("{column} >= {}", bind(from)));
            }
            if let Some(to) = to {
                // An upper end compares as a prefix: `1200` includes 12:00:59.
                let to = if a.vr == "TM" {
                    format!("{to}\u{7f}")
                } else {
                    to.clone()
                };
                parts.push(format!("{column} <= {}", bind(&to)));
            }
            format!("({})", parts.join(" AND "))
        }
    }
}

/// Letters with diacritics (in lower case) and the base letter they fold to.
/// Only one-to-one folds, so that `?` still matches one character and SQL can
/// express the same match with GLOB character classes; `ß`, `æ`, `œ` stay
/// themselves (up to case).
const BASE_LETTERS: &[(char, &str)] = &[
    ('a', "àáâãäåāăąǎǟǡǻȁȃȧạảấầẩẫậắằẳẵặ"),
    ('c', "çćĉċč"),
    ('d', "ďđ"),
    ('e', "èéêëēĕėęěȅȇȩẹẻẽếềểễệ"),
    ('g', "ĝğġģǧǵ"),
    ('h', "ĥħ"),
    ('i', "ìíîïĩīĭįıǐȉȋỉị"),
    ('j', "ĵǰ"),
    ('k', "ķǩ"),
    ('l', "ĺļľŀł"),
    ('n', "ñńņňǹ"),
    ('o', "òóôõöøōŏőơǒǫǭǿȍȏȫȭȯȱọỏốồổỗộớờởỡợ"),
    ('r', "ŕŗřȑȓ"),
    ('s', "śŝşšș"),
    ('t', "ţťŧț"),
    ('u', "ùúûüũūŭůűųưǔǖǘǚǜȕȗụủứừửữự"),
    ('w', "ŵẁẃẅ"),
    ('y', "ýÿŷȳỳỵỷỹ"),
    ('z', "źżž"),
    ('α', "ά"),
    ('ε', "έ"),
    ('η', "ή"),
    ('ι', "ίϊΐ"),
    ('ο', "ό"),
    ('σ', "ς"),
    ('υ', "ύϋΰ"),
    ('ω', "ώ"),
    ('е', "ё"),
];

/// Fold one character for person-name matching: Unicode lower case, then
/// Latin, Greek and Cyrillic letters with diacritics to their base letter
/// (`Ü` → `u`, `ø` → `o`, `ł` → `l`, `Ά` → `α`, `ς` → `σ`). Always one
/// character; idempotent.
pub fn fold_char(c: char) -> char {
    let mut lower = c.to_lowercase();
    let l = match (lower.next(), lower.next()) {
        (Some(l), None) => l,
        // Only U+0130 (İ) lowers to two characters: i + combining dot.
        _ if c == '\u{130}' => 'i',
        _ => c,
    };
    let maybe_accented =
        matches!(l, '\u{c0}'..='\u{24f}' | '\u{370}'..='\u{45f}' | '\u{1e00}'..='\u{1eff}');
    if maybe_accented && let Some((base, _)) = BASE_LETTERS.iter().find(|(_, v)| v.contains(l)) {
        return *base;
    }
    l
}

/// A person name folded for case- and accent-insensitive comparison (see
/// [`fold_char`]): `Müller^Jürgen` and `MULLER^JURGEN` fold alike. For the
/// index and any matching done outside SQL.
pub fn fold_person_name(name: &str) -> String {
    name.chars().map(fold_char).collect()
}

/// Every character that folds to `folded` (itself first), for GLOB classes.
fn folding_class(folded: char) -> &'static [char] {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static CLASSES: OnceLock<HashMap<char, Vec<char>>> = OnceLock::new();
    let classes = CLASSES.get_or_init(|| {
        let mut classes: HashMap<char, Vec<char>> = HashMap::new();
        for c in (0..=0x10_FFFF).filter_map(char::from_u32) {
            let f = fold_char(c);
            if f != c {
                classes.entry(f).or_insert_with(|| vec![f]).push(c);
            }
        }
        classes
    });
    classes.get(&folded).map_or(&[][..], Vec::as_slice)
}

/// A PN match value as a GLOB pattern matching what [`matches`] matches:
/// each letter becomes the class of the letters that fold like it; `*` and
/// `?` are wildcards when `wildcards`, literal otherwise.
fn folded_glob(value: &str, wildcards: bool) -> String {
    let mut glob = String::with_capacity(value.len() * 4);
    for c in value.chars() {
        match c {
            '*' | '?' if wildcards => glob.push(c),
            '*' | '?' | '[' => {
                glob.push('[');
                glob.push(c);
                glob.push(']');
            }
            _ => {
                let class = folding_class(fold_char(c));
                if class.len() > 1 {
                    glob.push('[');
                    glob.extend(class);
                    glob.push(']');
                } else {
                    glob.push(c);
                }
            }
        }
    }
    glob
}

/// Does `value` match `matcher` for an attribute of `kind` (PS3.4 C.2.2.2),
/// the same way the SQL of [`Query::sql_where`] does? For matching outside
/// SQL (the index, filters in Rust).
///
/// Padding (trailing spaces, NULs) is ignored. A multi-valued `value`
/// (backslash separated) matches when any of its values does, and a
/// backslash-separated single value (`CT\MR`) means any of them. Person
/// names compare folded ([`fold_person_name`]); other text compares exactly.
/// Range upper ends include everything they prefix (`-1200` includes
/// `120059`).
pub fn matches(matcher: &Matcher, value: &str, kind: MatchKind) -> bool {
    if matcher.is_universal() {
        return true;
    }
    let pad = |c: char| c == ' ' || c == '\0';
    let value = value.trim_matches(pad);
    value
        .split('\\')
        .any(|v| matches_one(matcher, v.trim_matches(pad), kind))
}

fn matches_one(matcher: &Matcher, value: &str, kind: MatchKind) -> bool {
    let person = kind == MatchKind::PersonName;
    let fold = |s: &str| -> String {
        if person {
            fold_person_name(s)
        } else {
            s.to_owned()
        }
    };
    match matcher {
        Matcher::Universal => true,
        Matcher::Single(p) => {
            let value = fold(value);
            p.split('\\').any(|p| fold(p) == value)
        }
        Matcher::Wildcard(p) => {
            let value: Vec<char> = fold(value).chars().collect();
            p.split('\\').any(|p| {
                let pattern: Vec<char> = fold(p).chars().collect();
                wildcard_match(&pattern, &value)
            })
        }
        Matcher::UidList(list) => list.iter().any(|u| u == value),
        Matcher::Range { from, to } => {
            !value.is_empty()
                && from.as_deref().is_none_or(|f| value >= f)
                && to
                    .as_deref()
                    .is_none_or(|t| value <= t || value.starts_with(t))
        }
    }
}

/// `*` matches any run, `?` one character, everything else itself.
fn wildcard_match(pattern: &[char], value: &[char]) -> bool {
    let (mut p, mut v) = (0, 0);
    // Where the last `*` was, and the value position it has swallowed to.
    let mut star: Option<(usize, usize)> = None;
    while v < value.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, v));
                p += 1;
            }
            Some(&c) if c == '?' || c == value[v] => {
                p += 1;
                v += 1;
            }
            _ => match star {
                Some((sp, sv)) => {
                    p = sp + 1;
                    v = sv + 1;
                    star = Some((sp, sv + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_sorted_by_tag() {
        assert!(ATTRIBUTES.windows(2).all(|w| w[0].tag < w[1].tag));
        assert_eq!(
            Attribute::by_keyword("PatientName").map(|a| a.tag),
            Some(0x0010_0010)
        );
        assert_eq!(Level::Series.unique_key().keyword, "SeriesInstanceUID");
    }

    #[test]
    fn match_values_are_read_per_kind() {
        assert_eq!(Matcher::parse(Text, "", false), Matcher::Universal);
        assert_eq!(Matcher::parse(Text, "**", false), Matcher::Universal);
        assert_eq!(
            Matcher::parse(PersonName, "DOE^J* ", false),
            Matcher::Wildcard("DOE^J*".into())
        );
        assert_eq!(
            Matcher::parse(DateOrTime, "20200101-", false),
            Matcher::Range {
                from: Some("20200101".into()),
                to: None
            }
        );
        assert_eq!(
            Matcher::parse(Uid, "1.2\\1.3", false),
            Matcher::UidList(vec!["1.2".into(), "1.3".into()])
        );
        assert_eq!(
            Matcher::parse(Uid, "1.2,1.3", false),
            Matcher::Single("1.2,1.3".into())
        );
        assert_eq!(
            Matcher::parse(Uid, "1.2,1.3", true),
            Matcher::UidList(vec!["1.2".into(), "1.3".into()])
        );
    }

    #[test]
    fn conditions_become_sql() {
        let q = Query::new(Level::Study)
            .with(
                Attribute::by_keyword("StudyDate").unwrap(),
                Matcher::parse(DateOrTime, "20200101-20201231", false),
            )
            .with(
                Attribute::by_keyword("PatientName").unwrap(),
                Matcher::parse(PersonName, "doe*", false),
            )
            .with(
                Attribute::by_keyword("AccessionNumber").unwrap(),
                Matcher::Universal,
            );
        let mut binds = Vec::new();
        let sql = q.sql_where(&mut binds).unwrap();
        assert_eq!(
            sql,
            "(st.study_date >= $1 AND st.study_date <= $2) AND p.patient_name GLOB $3"
        );
        assert_eq!(binds[..2], ["20200101", "20201231"]);
        assert!(binds[2].starts_with("[dD"), "{}", binds[2]);
        assert!(binds[2].ends_with("]*"), "{}", binds[2]);
    }

    #[test]
    fn folding_is_one_character_and_idempotent() {
        for (base, variants) in BASE_LETTERS {
            assert_eq!(fold_char(*base), *base);
            for v in variants.chars() {
                assert_eq!(v.to_lowercase().collect::<String>(), v.to_string(), "{v}");
                assert_eq!(fold_char(v), *base, "{v}");
            }
        }
        for c in (0..=0x10_FFFF).filter_map(char::from_u32) {
            let f = fold_char(c);
            assert_eq!(fold_char(f), f, "{c:?} folds to {f:?}, which folds further");
        }
        assert_eq!(fold_person_name("MÜLLER^Jürgen"), "muller^jurgen");
        assert_eq!(fold_person_name("Øvergård^Åse"), "overgard^ase");
        assert_eq!(
            fold_person_name("Παπαδοπούλου^Ελένη"),
            fold_person_name("ΠΑΠΑΔΟΠΟΥΛΟΥ^ΕΛΕΝΗ")
        );
        assert_eq!(fold_person_name("山田^太郎"), "山田^太郎");
        assert_eq!(fold_person_name("İSTANBUL"), "istanbul");
    }

    #[test]
    fn values_match_in_rust_per_ps3_4() {
        let pn = |p: &str, v: &str| matches(&Matcher::parse(PersonName, p, false), v, PersonName);
        assert!(pn("müller*", "MÜLLER^JÜRGEN"));
        assert!(pn("MULLER^JURGEN", "Müller^Jürgen"));
        assert!(pn("m?ller*", "Müller^Jürgen"));
        assert!(pn("*jürgen", "Müller^Jürgen"));
        assert!(!pn("müller", "Müller^Jürgen"));
        assert!(!pn("mueller*", "Müller^Jürgen"));
        assert!(pn("*", ""));
        let text = |p: &str, v: &str| matches(&Matcher::parse(Text, p, false), v, Text);
        assert!(text("CT", "CT\\SR"));
        assert!(text("MR\\CT", "CT"));
        assert!(!text("ct", "CT"));
        assert!(text("C?", "CT "));
        assert!(text("*A*B", "xAyAzB"));
        assert!(!text("*A*B", "xAyAzBc"));
        let date = |p: &str, v: &str| matches(&Matcher::parse(DateOrTime, p, false), v, DateOrTime);
        assert!(date("20200101-20201231", "20200615"));
        assert!(!date("20200101-20201231", "20210101"));
        assert!(date("-1200", "120059"));
        assert!(!date("-1200", "120100"));
        assert!(!date("20200101-", ""));
        let uid = |p: &str, v: &str| matches(&Matcher::parse(Uid, p, false), v, Uid);
        assert!(uid("1.2\\1.3", "1.3"));
        assert!(!uid("1.2\\1.3", "1.4"));
    }

    /// The SQL of person-name conditions selects exactly what `matches`
    /// accepts, in SQLite itself.
    #[tokio::test]
    async fn person_name_sql_agrees_with_matches() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let names = [
            "Müller^Jürgen",
            "MÜLLER^JÜRGEN",
            "Muller^Jurgen",
            "Mueller^Juergen",
            "müller^jürgen^^Dr.",
            "Øvergård^Åse",
            "OVERGARD^ASE",
            "Παπαδοπούλου^Ελένη",
            "ΠΑΠΑΔΟΠΟΥΛΟΥ^ΕΛΕΝΗ",
            "Yamada^Tarou=山田^太郎=やまだ^たろう",
            "Doe[1]^John",
            "Smith^Anna",
        ];
        let patterns = [
            "müller*",
            "MULLER^JURGEN",
            "m?ller^j*",
            "*JÜRGEN*",
            "øvergård^åse",
            "overgard*",
            "παπαδοπουλου*",
            "ΠΑΠΑΔΟΠΟΎΛΟΥ^ΕΛΈΝΗ",
            "*山田*",
            "doe[1]*",
            "DOE[1]^JOHN",
            "smith^anna",
            "*",
        ];
        for pattern in patterns {
            let attribute = Attribute::by_keyword("PatientName").unwrap();
            let matcher = Matcher::parse(PersonName, pattern, false);
            let query = Query::new(Level::Patient).with(attribute, matcher.clone());
            let mut binds = Vec::new();
            let condition = query
                .sql_where(&mut binds)
                .unwrap_or_else(|| "1 = 1".into());
            let mut selected = Vec::new();
            for name in names {
                let sql = format!("SELECT 1 FROM (SELECT ? AS patient_name) p WHERE {condition}");
                let sql = sql.replace("$1", "?");
                let mut q = sqlx::query(&sql).bind(name);
                for b in &binds {
                    q = q.bind(b.as_str());
                }
                if q.fetch_optional(&pool).await.unwrap().is_some() {
                    selected.push(name);
                }
            }
            let expected: Vec<&str> = names
                .into_iter()
                .filter(|n| matches(&matcher, n, PersonName))
                .collect();
            assert_eq!(selected, expected, "{pattern}: {condition} {binds:?}");
            assert!(!expected.is_empty(), "{pattern} matches nothing");
        }
    }
}
