//! C-FIND SCP (PS3.4 C.4.1) for the Patient Root and Study Root information
//! models, and the identifier-to-instances query of C-GET and C-MOVE.
//!
//! The identifier is read into the archive's one query model
//! ([`pacs_archive::query`]): a level and, per key, a matcher (single value,
//! `*`/`?` wildcards, date/time ranges, UID lists, universal matching; person
//! names case- and accent-insensitive). The matching rules and their SQL are
//! written there, once, for every front door; this module only decides which
//! keys are matched and returned, and turns answers into response
//! identifiers. The association sends them, one pending response per match,
//! honouring C-CANCEL.
//!
//! Answers come from the catalog ([`FindQuery::catalog_sql`]). Any other
//! source that answers the same [`Query`] (the study index, later) builds the
//! same identifiers with [`FindQuery::identifier_with`].

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_object::mem::InMemElement;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use pacs_archive::query::{Attribute, Level, Matcher, Query};

use crate::dimse::{Status, status};

pub const PATIENT_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.1.1";
pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
pub const PATIENT_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.1.3";
pub const STUDY_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";
pub const PATIENT_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.1.2";
pub const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";

const QUERY_RETRIEVE_LEVEL: Tag = Tag(0x0008, 0x0052);
const SPECIFIC_CHARACTER_SET: Tag = Tag(0x0008, 0x0005);

/// Character set of every response identifier (values are UTF-8 in the
/// catalog).
const RESPONSE_CHARACTER_SET: &str = "ISO_IR 192";

/// A parsed C-FIND (or C-GET/C-MOVE) identifier: the shared typed query,
/// and what the response identifiers carry.
#[derive(Debug)]
pub struct FindQuery {
    query: Query,
    /// Attributes the archive fills in responses: the requested keys it
    /// knows at this level, then the unique keys of this level and the
    /// levels above it in the information model.
    returned: Vec<&'static Attribute>,
    /// Requested keys the archive cannot fill: returned empty (PS3.4
    /// C.4.1.1.3.2 allows it for unsupported optional keys).
    unsupported: Vec<(Tag, VR)>,
    transfer_syntax: String,
}

impl FindQuery {
    /// The query in the archive's model; what any source is asked.
    pub fn query(&self) -> &Query {
        &self.query
    }

    pub fn level(&self) -> Level {
        self.query.level
    }

    /// The attributes every response identifier carries, in the order of
    /// the columns of [`FindQuery::catalog_sql`].
    pub fn returned(&self) -> &[&'static Attribute] {
        &self.returned
    }

    /// Were keys requested that cannot be matched or returned (status
    /// FF01)?
    pub fn has_unsupported_keys(&self) -> bool {
        !self.unsupported.is_empty()
    }

    /// The catalog query answering this one, one row per match with a text
    /// column per [`FindQuery::returned`] attribute, and its binds.
    pub fn catalog_sql(&self) -> (String, Vec<String>) {
        let columns: Vec<String> = self
            .returned
            .iter()
            .map(|a| format!("CAST({} AS TEXT)", a.column))
            .collect();
        let unique = self.query.level.unique_key();
        let order = self
            .returned
            .iter()
            .position(|a| a.tag == unique.tag)
            .map_or(1, |i| i + 1);
        let mut binds = Vec::new();
        let mut sql = format!(
            "SELECT DISTINCT {} FROM {}",
            columns.join(", "),
            from_clause(self.query.level)
        );
        if let Some(conditions) = self.query.sql_where(&mut binds) {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions);
        }
        sql.push_str(&format!(" ORDER BY {order}"));
        (sql, binds)
    }

    /// A response identifier with the value of each returned attribute as
    /// `value_of` gives it (`None`: zero length). The catalog's rows and any
    /// other source answering [`FindQuery::query`] go through here.
    pub fn identifier_with(
        &self,
        mut value_of: impl FnMut(&'static Attribute) -> Option<String>,
    ) -> Result<Vec<u8>, Status> {
        let mut object = InMemDicomObject::new_empty();
        object.put_str(SPECIFIC_CHARACTER_SET, VR::CS, RESPONSE_CHARACTER_SET);
        object.put_str(QUERY_RETRIEVE_LEVEL, VR::CS, self.query.level.name());
        for attribute in &self.returned {
            object.put(element(attribute, value_of(attribute)));
        }
        for (tag, vr) in &self.unsupported {
            object.put(if *vr == VR::SQ {
                DataElement::new(*tag, VR::SQ, DataSetSequence::empty())
            } else {
                DataElement::new(*tag, *vr, PrimitiveValue::Empty)
            });
        }
        let ts = TransferSyntaxRegistry
            .get(&self.transfer_syntax)
            .ok_or_else(|| Status::failure(status::CANNOT_UNDERSTAND, "transfer syntax"))?;
        let mut out = Vec::new();
        object
            .write_dataset_with_ts(&mut out, ts)
            .map_err(|_| Status::failure(status::CANNOT_UNDERSTAND, "cannot encode a response"))?;
        Ok(out)
    }
}

/// Parse the identifier of a C-FIND-RQ (or C-GET/C-MOVE-RQ) into the shared
/// query model.
///
/// Keys the archive knows at or above the query level are matched and
/// returned; the unique keys of the level and of the levels above it are
/// always returned. Higher-level keys other than unique keys are accepted as
/// matching keys too (relational-style leniency that modalities rely on).
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
    // The identifier's Specific Character Set, if any, decodes its values.
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
    let study_root =
        [STUDY_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE].contains(&information_model);
    if study_root && level == Level::Patient {
        return Err(Status::failure(
            status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "Study Root has no PATIENT level",
        ));
    }
    let mut query = Query::new(level);
    let mut returned: Vec<&'static Attribute> = Vec::new();
    let mut unsupported = Vec::new();
    for element in object.iter() {
        let tag = element.header().tag;
        if tag == QUERY_RETRIEVE_LEVEL || tag == SPECIFIC_CHARACTER_SET || tag.element() == 0 {
            continue;
        }
        let known = Attribute::by_tag((u32::from(tag.group()) << 16) | u32::from(tag.element()))
            .filter(|a| a.level <= level);
        let Some(attribute) = known else {
            unsupported.push((tag, element.header().vr));
            continue;
        };
        returned.push(attribute);
        let value = element.to_str().map(|v| v.into_owned()).unwrap_or_default();
        query.push(attribute, Matcher::parse(attribute.kind, &value, false));
    }
    let top = if study_root {
        Level::Study
    } else {
        Level::Patient
    };
    for l in [Level::Patient, Level::Study, Level::Series, Level::Image] {
        let unique = l.unique_key();
        if l >= top && l <= level && !returned.iter().any(|a| a.tag == unique.tag) {
            returned.push(unique);
        }
    }
    Ok(FindQuery {
        query,
        returned,
        unsupported,
        transfer_syntax: transfer_syntax.to_owned(),
    })
}

/// The catalog tables joined down to `level`.
fn from_clause(level: Level) -> String {
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
    from
}

/// The instances a C-GET or C-MOVE identifier selects: SQL returning SOP
/// Instance UID, SOP Class UID and stored transfer syntax, with its binds.
pub fn retrieve_query(
    information_model: &str,
    identifier: &[u8],
    transfer_syntax: &str,
) -> Result<(String, Vec<String>), Status> {
    let parsed = parse(information_model, identifier, transfer_syntax)?;
    let mut binds = Vec::new();
    let mut sql = format!(
        "SELECT i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid FROM {}",
        from_clause(Level::Image)
    );
    if let Some(conditions) = parsed.query.sql_where(&mut binds) {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions);
    }
    sql.push_str(" ORDER BY i.series_instance_uid, i.instance_number, i.sop_instance_uid");
    Ok((sql, binds))
}

/// Encode one catalog row (columns as in [`FindQuery::catalog_sql`]) as a
/// response identifier.
pub fn response_identifier(query: &FindQuery, row: &[Option<String>]) -> Result<Vec<u8>, Status> {
    query.identifier_with(|attribute| {
        let column = query
            .returned()
            .iter()
            .position(|a| a.tag == attribute.tag)?;
        row.get(column).cloned().flatten()
    })
}

/// One returned attribute with its value, in the attribute's VR.
fn element(attribute: &Attribute, value: Option<String>) -> InMemElement {
    let tag = Tag(attribute.group(), attribute.element());
    let vr: VR = attribute.vr.parse().unwrap_or(VR::LO);
    let value = value.unwrap_or_default();
    let value = value.trim_matches(|c: char| c == ' ' || c == '\0');
    let primitive = if value.is_empty() {
        PrimitiveValue::Empty
    } else if attribute.keyword == "ModalitiesInStudy" {
        // The catalog lists them comma separated; DICOM multi-valued.
        let mut modalities: Vec<&str> = value
            .split([',', '\\'])
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        modalities.sort_unstable();
        modalities.dedup();
        PrimitiveValue::Strs(modalities.into_iter().map(str::to_owned).collect())
    } else {
        match vr {
            VR::US => value
                .parse::<u16>()
                .map_or(PrimitiveValue::Empty, PrimitiveValue::from),
            _ => PrimitiveValue::from(value.to_owned()),
        }
    };
    DataElement::new(tag, vr, primitive)
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

    const IMPLICIT: &str = "1.2.840.10008.1.2";

    #[test]
    fn identifiers_become_the_shared_query_and_its_sql() {
        let id = identifier(
            "STUDY",
            &[
                (Tag(0x0010, 0x0010), VR::PN, "doe*"),
                (Tag(0x0008, 0x0020), VR::DA, "20200101-20201231"),
                (Tag(0x0020, 0x000D), VR::UI, "1.2.3\\1.2.4"),
                (Tag(0x0008, 0x0050), VR::SH, ""),
                (Tag(0x0008, 0x0060), VR::CS, "CT"),
                (Tag(0x0008, 0x0061), VR::CS, "MR"),
                (Tag(0x0020, 0x1208), VR::IS, "7"),
                (Tag(0x0009, 0x0010), VR::LO, "x"),
            ],
        );
        let q = parse(STUDY_ROOT_FIND, &id, IMPLICIT).unwrap();
        assert_eq!(q.level(), Level::Study);
        let matched: Vec<&str> = q
            .query()
            .conditions
            .iter()
            .map(|c| c.attribute.keyword)
            .collect();
        // Tag order; universal, computed and lower-level keys match nothing.
        assert_eq!(
            matched,
            [
                "StudyDate",
                "ModalitiesInStudy",
                "PatientName",
                "StudyInstanceUID"
            ]
        );
        assert_eq!(
            q.query().condition(0x0020_000D),
            Some(&Matcher::UidList(vec!["1.2.3".into(), "1.2.4".into()]))
        );
        let returned: Vec<&str> = q.returned().iter().map(|a| a.keyword).collect();
        assert_eq!(
            returned,
            [
                "StudyDate",
                "AccessionNumber",
                "ModalitiesInStudy",
                "PatientName",
                "StudyInstanceUID",
                "NumberOfStudyRelatedInstances"
            ]
        );
        // Modality (SERIES) at STUDY level and the private key.
        assert!(q.has_unsupported_keys());
        let (sql, binds) = q.catalog_sql();
        assert!(
            sql.starts_with("SELECT DISTINCT CAST(st.study_date AS TEXT), "),
            "{sql}"
        );
        assert!(sql.contains("(SELECT COUNT(*) FROM instances c"), "{sql}");
        assert!(sql.contains("st.study_instance_uid IN ("), "{sql}");
        assert!(!sql.contains("se."), "{sql}");
        assert!(sql.ends_with(" ORDER BY 5"), "{sql}");
        assert_eq!(binds[..3], ["20200101", "20201231", "MR"]);
        assert_eq!(binds[4..], ["1.2.3", "1.2.4"]);

        let patient = identifier("PATIENT", &[]);
        assert!(parse(STUDY_ROOT_FIND, &patient, IMPLICIT).is_err());
        assert!(parse(PATIENT_ROOT_FIND, &patient, IMPLICIT).is_ok());
        assert!(parse(PATIENT_ROOT_FIND, b"garbage", IMPLICIT).is_err());
    }

    #[test]
    fn higher_level_unique_keys_are_returned_per_model() {
        let id = identifier("IMAGE", &[(Tag(0x0028, 0x0010), VR::US, "")]);
        let keys = |model| -> Vec<&str> {
            parse(model, &id, IMPLICIT)
                .unwrap()
                .returned()
                .iter()
                .map(|a| a.keyword)
                .collect()
        };
        assert_eq!(
            keys(STUDY_ROOT_FIND),
            [
                "Rows",
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "SOPInstanceUID"
            ]
        );
        assert_eq!(
            keys(PATIENT_ROOT_FIND),
            [
                "Rows",
                "PatientID",
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "SOPInstanceUID"
            ]
        );
    }

    #[test]
    fn responses_carry_values_in_their_vr() {
        let id = identifier(
            "STUDY",
            &[
                (Tag(0x0008, 0x0061), VR::CS, ""),
                (Tag(0x0020, 0x1206), VR::IS, ""),
                (Tag(0x0010, 0x0010), VR::PN, ""),
                (Tag(0x0008, 0x0060), VR::CS, "CT"),
            ],
        );
        let q = parse(STUDY_ROOT_FIND, &id, IMPLICIT).unwrap();
        let bytes = q
            .identifier_with(|a| match a.keyword {
                "ModalitiesInStudy" => Some("SR,CT".into()),
                "NumberOfStudyRelatedSeries" => Some("2".into()),
                "PatientName" => Some("Müller^Jürgen".into()),
                "StudyInstanceUID" => Some("1.2.3".into()),
                _ => None,
            })
            .unwrap();
        let ts = TransferSyntaxRegistry.get(IMPLICIT).unwrap();
        let o = InMemDicomObject::read_dataset_with_ts(&bytes[..], ts).unwrap();
        let text = |t: Tag| o.element(t).unwrap().to_str().unwrap().into_owned();
        assert_eq!(text(Tag(0x0008, 0x0061)), "CT\\SR");
        assert_eq!(
            o.element(Tag(0x0008, 0x0061))
                .unwrap()
                .value()
                .multiplicity(),
            2
        );
        assert_eq!(text(Tag(0x0020, 0x1206)), "2");
        assert_eq!(text(Tag(0x0010, 0x0010)), "Müller^Jürgen");
        assert_eq!(text(Tag(0x0020, 0x000D)), "1.2.3");
        assert_eq!(text(SPECIFIC_CHARACTER_SET), "ISO_IR 192");
        // Not known at STUDY level: present, empty.
        assert_eq!(o.element(Tag(0x0008, 0x0060)).unwrap().header().len.0, 0);
    }
}
