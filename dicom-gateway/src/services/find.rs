//! C-FIND SCP (PS3.4 C.4.1) for the Patient Root and Study Root information
//! models, answered from the catalog. This module turns an identifier into
//! one SQL query (PS3.4 C.2.2.2 matching: single value, `*`/`?` wildcards,
//! date/time ranges, UID lists, universal matching, case-insensitive person
//! names) and turns result rows into response identifiers; the association
//! sends them, one pending response per match, honouring C-CANCEL.

use dicom_core::{Tag, VR};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use crate::dimse::{Status, status};

pub const PATIENT_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.1.1";
pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
pub const PATIENT_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.1.3";
pub const STUDY_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";
pub const PATIENT_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.1.2";
pub const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";

const QUERY_RETRIEVE_LEVEL: Tag = Tag(0x0008, 0x0052);
const SPECIFIC_CHARACTER_SET: Tag = Tag(0x0008, 0x0005);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Patient,
    Study,
    Series,
    Image,
}

impl Level {
    fn parse(value: &str) -> Option<Level> {
        match value.trim() {
            "PATIENT" => Some(Level::Patient),
            "STUDY" => Some(Level::Study),
            "SERIES" => Some(Level::Series),
            "IMAGE" => Some(Level::Image),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Patient => "PATIENT",
            Level::Study => "STUDY",
            Level::Series => "SERIES",
            Level::Image => "IMAGE",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Matching {
    Text,
    PersonName,
    Uid,
    DateOrTime,
}

struct Key {
    tag: Tag,
    vr: VR,
    level: Level,
    column: &'static str,
    matching: Matching,
}

/// The attributes the catalog can match and return, with their columns.
const KEYS: &[Key] = &[
    key(
        0x0010,
        0x0010,
        VR::PN,
        Level::Patient,
        "p.patient_name",
        Matching::PersonName,
    ),
    key(
        0x0010,
        0x0020,
        VR::LO,
        Level::Patient,
        "p.patient_id",
        Matching::Text,
    ),
    key(
        0x0010,
        0x0021,
        VR::LO,
        Level::Patient,
        "p.issuer_of_patient_id",
        Matching::Text,
    ),
    key(
        0x0010,
        0x0030,
        VR::DA,
        Level::Patient,
        "p.birth_date",
        Matching::DateOrTime,
    ),
    key(
        0x0010,
        0x0040,
        VR::CS,
        Level::Patient,
        "p.sex",
        Matching::Text,
    ),
    key(
        0x0020,
        0x000D,
        VR::UI,
        Level::Study,
        "st.study_instance_uid",
        Matching::Uid,
    ),
    key(
        0x0008,
        0x0020,
        VR::DA,
        Level::Study,
        "st.study_date",
        Matching::DateOrTime,
    ),
    key(
        0x0008,
        0x0030,
        VR::TM,
        Level::Study,
        "st.study_time",
        Matching::DateOrTime,
    ),
    key(
        0x0008,
        0x0050,
        VR::SH,
        Level::Study,
        "st.accession_number",
        Matching::Text,
    ),
    key(
        0x0020,
        0x0010,
        VR::SH,
        Level::Study,
        "st.study_id",
        Matching::Text,
    ),
    key(
        0x0008,
        0x1030,
        VR::LO,
        Level::Study,
        "st.study_description",
        Matching::Text,
    ),
    key(
        0x0008,
        0x0090,
        VR::PN,
        Level::Study,
        "st.referring_physician_name",
        Matching::PersonName,
    ),
    key(
        0x0020,
        0x000E,
        VR::UI,
        Level::Series,
        "se.series_instance_uid",
        Matching::Uid,
    ),
    key(
        0x0008,
        0x0060,
        VR::CS,
        Level::Series,
        "se.modality",
        Matching::Text,
    ),
    key(
        0x0020,
        0x0011,
        VR::IS,
        Level::Series,
        "CAST(se.series_number AS TEXT)",
        Matching::Text,
    ),
    key(
        0x0008,
        0x103E,
        VR::LO,
        Level::Series,
        "se.series_description",
        Matching::Text,
    ),
    key(
        0x0018,
        0x0015,
        VR::CS,
        Level::Series,
        "se.body_part_examined",
        Matching::Text,
    ),
    key(
        0x0008,
        0x0018,
        VR::UI,
        Level::Image,
        "i.sop_instance_uid",
        Matching::Uid,
    ),
    key(
        0x0008,
        0x0016,
        VR::UI,
        Level::Image,
        "i.sop_class_uid",
        Matching::Uid,
    ),
    key(
        0x0020,
        0x0013,
        VR::IS,
        Level::Image,
        "CAST(i.instance_number AS TEXT)",
        Matching::Text,
    ),
];

const fn key(
    group: u16,
    element: u16,
    vr: VR,
    level: Level,
    column: &'static str,
    matching: Matching,
) -> Key {
    Key {
        tag: Tag(group, element),
        vr,
        level,
        column,
        matching,
    }
}

/// The unique key of each level.
fn unique_key(level: Level) -> Tag {
    match level {
        Level::Patient => Tag(0x0010, 0x0020),
        Level::Study => Tag(0x0020, 0x000D),
        Level::Series => Tag(0x0020, 0x000E),
        Level::Image => Tag(0x0008, 0x0018),
    }
}

fn find_key(tag: Tag) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.tag == tag)
}

/// A parsed C-FIND request, ready to run.
#[derive(Debug)]
pub struct FindQuery {
    pub level: Level,
    pub sql: String,
    pub binds: Vec<String>,
    /// Returned keys, in SELECT column order.
    returned: Vec<Tag>,
    /// Requested attributes the catalog cannot fill: returned empty.
    unsupported: Vec<(Tag, VR)>,
    transfer_syntax: String,
}

impl FindQuery {
    /// Were optional keys requested that cannot be matched (status FF01)?
    pub fn has_unsupported_keys(&self) -> bool {
        !self.unsupported.is_empty()
    }
}

/// Parse the identifier of a C-FIND-RQ and build its SQL.
pub fn parse(
    information_model: &str,
    identifier: &[u8],
    transfer_syntax: &str,
) -> Result<FindQuery, Status> {
    let ts = TransferSyntaxRegistry
        .get(transfer_syntax)
        .filter(|ts| !ts.is_unsupported())
        .ok_or_else(|| {
            Status::failure(
                status::CANNOT_UNDERSTAND,
                "identifier transfer syntax not supported",
            )
        })?;
    let object = InMemDicomObject::read_dataset_with_ts(identifier, ts)
        .map_err(|_| Status::failure(status::CANNOT_UNDERSTAND, "identifier cannot be parsed"))?;
    let level = object
        .element_opt(QUERY_RETRIEVE_LEVEL)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .and_then(|v| Level::parse(&v))
        .ok_or_else(|| {
            Status::failure(
                status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                "missing or invalid QueryRetrieveLevel",
            )
        })?;
    if [STUDY_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE].contains(&information_model)
        && level == Level::Patient
    {
        return Err(Status::failure(
            status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "Study Root has no PATIENT level",
        ));
    }
    let mut returned = Vec::new();
    let mut unsupported = Vec::new();
    let mut conditions = Vec::new();
    let mut binds = Vec::new();
    for element in object.iter() {
        let tag = element.header().tag;
        if tag == QUERY_RETRIEVE_LEVEL || tag == SPECIFIC_CHARACTER_SET || tag.element() == 0 {
            continue;
        }
        let Some(key) = find_key(tag).filter(|k| k.level <= level) else {
            unsupported.push((tag, element.header().vr));
            continue;
        };
        returned.push(tag);
        let value = element
            .to_str()
            .map(|v| v.trim_matches(|c: char| c == ' ' || c == '\0').to_owned())
            .unwrap_or_default();
        if let Some(condition) = condition(key, &value, &mut binds) {
            conditions.push(condition);
        }
    }
    let unique = unique_key(level);
    if !returned.contains(&unique) {
        returned.push(unique);
    }
    let columns: Vec<&str> = returned
        .iter()
        .map(|t| find_key(*t).map_or("NULL", |k| k.column))
        .collect();
    let mut from = String::from("patients p");
    if level >= Level::Study {
        from.push_str(" JOIN studies st ON st.patient_pk = p.id");
    }
    if level >= Level::Series {
        from.push_str(" JOIN series se ON se.study_instance_uid = st.study_instance_uid");
    }
    if level >= Level::Image {
        from.push_str(" JOIN instances i ON i.series_instance_uid = se.series_instance_uid");
    }
    let unique_column = find_key(unique).map_or("NULL", |k| k.column);
    let mut sql = format!("SELECT DISTINCT {} FROM {from}", columns.join(", "));
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(&format!(" ORDER BY {unique_column}"));
    Ok(FindQuery {
        level,
        sql,
        binds,
        returned,
        unsupported,
        transfer_syntax: transfer_syntax.to_owned(),
    })
}

/// The instances a C-GET identifier selects: SQL returning SOP Instance
/// UID, SOP Class UID and stored transfer syntax, with its binds.
pub fn retrieve_query(
    information_model: &str,
    identifier: &[u8],
    transfer_syntax: &str,
) -> Result<(String, Vec<String>), Status> {
    let query = parse(information_model, identifier, transfer_syntax)?;
    let where_clause = query.sql.split_once(" WHERE ").map(|(_, rest)| {
        rest.rsplit_once(" ORDER BY ")
            .map_or(rest, |(w, _)| w)
            .to_owned()
    });
    let mut sql = String::from(
        "SELECT DISTINCT i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid \
         FROM patients p JOIN studies st ON st.patient_pk = p.id \
         JOIN series se ON se.study_instance_uid = st.study_instance_uid \
         JOIN instances i ON i.series_instance_uid = se.series_instance_uid",
    );
    if let Some(w) = where_clause {
        sql.push_str(" WHERE ");
        sql.push_str(&w);
    }
    sql.push_str(" ORDER BY i.series_instance_uid, i.instance_number, i.sop_instance_uid");
    Ok((sql, query.binds))
}

/// The SQL condition for one key's value (PS3.4 C.2.2.2), or `None` for
/// universal matching.
fn condition(key: &Key, value: &str, binds: &mut Vec<String>) -> Option<String> {
    if value.is_empty() || value.chars().all(|c| c == '*') {
        return None;
    }
    let column = key.column;
    let mut bind = |v: &str| {
        binds.push(v.to_owned());
        format!("${}", binds.len())
    };
    Some(match key.matching {
        Matching::Uid => {
            let list: Vec<String> = value
                .split('\\')
                .map(|u| u.trim_matches(|c: char| c == ' ' || c == '\0'))
                .filter(|u| !u.is_empty())
                .map(&mut bind)
                .collect();
            if list.is_empty() {
                return None;
            }
            format!("{column} IN ({})", list.join(", "))
        }
        Matching::DateOrTime => match value.split_once('-') {
            Some((from, to)) => {
                let mut parts = Vec::new();
                if !from.is_empty() {
                    parts.push(format!("{column} >= {}", bind(from)));
                }
                if !to.is_empty() {
                    // A range end without time of day includes the whole day.
                    let to = if key.vr == VR::TM {
                        format!("{to}\u{7f}")
                    } else {
                        to.to_owned()
                    };
                    parts.push(format!("{column} <= {}", bind(&to)));
                }
                if parts.is_empty() {
                    return None;
                }
                format!("({})", parts.join(" AND "))
            }
            None => format!("{column} = {}", bind(value)),
        },
        Matching::PersonName => {
            if has_wildcards(value) {
                format!("lower({column}) GLOB lower({})", bind(&glob(value)))
            } else {
                format!("lower({column}) = lower({})", bind(value))
            }
        }
        Matching::Text => {
            if has_wildcards(value) {
                format!("{column} GLOB {}", bind(&glob(value)))
            } else {
                format!("{column} = {}", bind(value))
            }
        }
    })
}

fn has_wildcards(value: &str) -> bool {
    value.contains('*') || value.contains('?')
}

/// DICOM wildcards are GLOB's; only `[` must be made literal.
fn glob(value: &str) -> String {
    value.replace('[', "[[]")
}

/// Encode one matching row as a response identifier.
pub fn response_identifier(query: &FindQuery, row: &[Option<String>]) -> Result<Vec<u8>, Status> {
    let mut object = InMemDicomObject::new_empty();
    object.put_str(SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    object.put_str(QUERY_RETRIEVE_LEVEL, VR::CS, query.level.name());
    for (tag, value) in query.returned.iter().zip(row) {
        let vr = find_key(*tag).map_or(VR::LO, |k| k.vr);
        object.put_str(*tag, vr, value.clone().unwrap_or_default());
    }
    for (tag, vr) in &query.unsupported {
        object.put_str(*tag, *vr, "");
    }
    let ts = TransferSyntaxRegistry
        .get(&query.transfer_syntax)
        .ok_or_else(|| Status::failure(status::CANNOT_UNDERSTAND, "transfer syntax"))?;
    let mut out = Vec::new();
    object
        .write_dataset_with_ts(&mut out, ts)
        .map_err(|_| Status::failure(status::CANNOT_UNDERSTAND, "cannot encode a response"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identifier(level: &str, keys: &[(Tag, VR, &str)]) -> Vec<u8> {
        let mut o = InMemDicomObject::new_empty();
        o.put_str(QUERY_RETRIEVE_LEVEL, VR::CS, level);
        for (t, vr, v) in keys {
            o.put_str(*t, *vr, *v);
        }
        let mut out = Vec::new();
        o.write_dataset_with_ts(
            &mut out,
            &dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
        out
    }

    #[test]
    fn matching_rules_become_sql() {
        let id = identifier(
            "STUDY",
            &[
                (Tag(0x0010, 0x0010), VR::PN, "doe*"),
                (Tag(0x0008, 0x0020), VR::DA, "20200101-20201231"),
                (Tag(0x0020, 0x000D), VR::UI, "1.2.3\\1.2.4"),
                (Tag(0x0008, 0x0050), VR::SH, ""),
                (Tag(0x0008, 0x0060), VR::CS, "CT"),
                (Tag(0x0009, 0x0010), VR::LO, "x"),
            ],
        );
        let q = parse(STUDY_ROOT_FIND, &id, "1.2.840.10008.1.2").unwrap();
        assert_eq!(q.level, Level::Study);
        // Keys come in tag order: study date, patient name, study UID.
        let expected = [
            "(st.study_date >= $1 AND st.study_date <= $2)",
            "lower(p.patient_name) GLOB lower($3)",
            "st.study_instance_uid IN ($4, $5)",
        ];
        for part in expected {
            assert!(q.sql.contains(part), "{part} not in {}", q.sql);
        }
        assert!(!q.sql.contains("accession_number ="), "{}", q.sql);
        // SERIES keys are not matched at STUDY level.
        assert!(!q.sql.contains("se.modality"), "{}", q.sql);
        assert!(q.has_unsupported_keys());
        assert_eq!(q.binds, ["20200101", "20201231", "doe*", "1.2.3", "1.2.4"]);
        let patient = identifier("PATIENT", &[]);
        assert!(parse(STUDY_ROOT_FIND, &patient, "1.2.840.10008.1.2").is_err());
        assert!(parse(PATIENT_ROOT_FIND, &patient, "1.2.840.10008.1.2").is_ok());
        assert!(parse(PATIENT_ROOT_FIND, b"garbage", "1.2.840.10008.1.2").is_err());
    }
}
