//! Parsing and validation of incoming objects.
//!
//! Every element header of the object is walked first (`structure`), so a file
//! truncated inside its pixel data, or one declaring lengths it does not
//! have, is refused before anything is allocated on its word. The data set is
//! then parsed only up to the pixel data (reports, SR and Encapsulated PDF,
//! have none: their content tree and document are read whole, and their
//! text extracted here, see `document`). Binary bulk data is dropped before
//! the DICOM JSON metadata (PS3.18 F.2) is made; such attributes stay in the
//! JSON with their VR and no value.

use dicom_core::Tag;
use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{FileMetaTable, FileMetaTableBuilder, InMemDicomObject, OpenFileOptions};

use super::document::{self, ReportDocument};
use super::structure;
use super::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use crate::blob::PixelPlanes;
use crate::model::{InstanceAttributes, RefusalReason, check_uid, uid_has_leading_zero};

/// A parsed, validated object.
#[derive(Debug, Clone)]
pub struct ParsedObject {
    pub attributes: InstanceAttributes,
    /// DICOM JSON of the data set without bulk data.
    pub metadata_json: String,
    /// The report it holds, for an SR or Encapsulated PDF whose text could
    /// be read.
    pub document: Option<ReportDocument>,
    /// Native pixel data with multi-byte samples, stored as byte planes.
    pub pixel_planes: Option<PixelPlanes>,
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// What precedes a received data set in its Part-10 object: the 128-byte
/// preamble, `DICM` and the file meta group.
pub fn part10_prefix(
    transfer_syntax_uid: &str,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    source_ae_title: Option<&str>,
) -> Result<Vec<u8>, RefusalReason> {
    let mut builder = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class_uid)
        .media_storage_sop_instance_uid(sop_instance_uid)
        .transfer_syntax(transfer_syntax_uid)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME);
    if let Some(ae) = source_ae_title.filter(|ae| !ae.is_empty()) {
        builder = builder.source_application_entity_title(ae);
    }
    let meta = builder.build().map_err(|e| {
        RefusalReason::Unparseable(format!("cannot build file meta group: {}", error_chain(&e)))
    })?;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&[0u8; 128]);
    out.extend_from_slice(b"DICM");
    meta.write(&mut out).map_err(|e| {
        RefusalReason::Unparseable(format!("cannot write file meta group: {}", error_chain(&e)))
    })?;
    Ok(out)
}

/// Check the structure of everything after `DICM` (refusing objects whose
/// declared lengths do not fit in the bytes received, before the parser
/// allocates anything on their word). Returns the transfer syntax, the VR of
/// the Pixel Data element if any, and for a deflated data set its inflated
/// bytes (inflated once here, parsed from memory below).
fn check_structure(after_magic: &[u8]) -> Result<CheckedObject, RefusalReason> {
    let (transfer_syntax, offset) = structure::check_meta(after_magic)
        .map_err(|e| RefusalReason::Unparseable(format!("file meta group: {e}")))?;
    {
        use dicom_encoding::TransferSyntaxIndex;
        if dicom_transfer_syntax_registry::TransferSyntaxRegistry
            .get(&transfer_syntax)
            .is_none()
        {
            return Err(RefusalReason::UnknownTransferSyntax(transfer_syntax));
        }
    }
    let dataset = &after_magic[offset..];
    let structure_error = |e| RefusalReason::Unparseable(format!("data set structure: {e}"));
    if structure::is_deflated(&transfer_syntax) {
        // Bounded inflate: a deflate bomb stops at the cap, then fails the walk.
        let cap = (dataset.len() as u64).saturating_mul(64).min(4 << 30);
        let mut inflated = Vec::new();
        let reader = flate2::read::DeflateDecoder::new(dataset);
        std::io::Read::read_to_end(&mut std::io::Read::take(reader, cap), &mut inflated)
            .map_err(|e| RefusalReason::Unparseable(format!("deflated data set: {e}")))?;
        let pixel_data =
            structure::check_dataset(&inflated, EXPLICIT_VR_LE).map_err(structure_error)?;
        Ok(CheckedObject {
            pixel_data_vr: pixel_data.map(|p| p.vr),
            // Its bytes are deflated in the object: nothing to split.
            pixel_value: None,
            inflated: Some(inflated),
        })
    } else {
        let pixel_data =
            structure::check_dataset(dataset, &transfer_syntax).map_err(structure_error)?;
        Ok(CheckedObject {
            pixel_data_vr: pixel_data.as_ref().map(|p| p.vr),
            pixel_value: pixel_data
                .and_then(|p| p.value)
                .map(|v| v.start + offset..v.end + offset),
            inflated: None,
        })
    }
}

struct CheckedObject {
    pixel_data_vr: Option<VR>,
    /// Where a native Pixel Data value lies, counted from after `DICM`.
    pixel_value: Option<std::ops::Range<usize>>,
    inflated: Option<Vec<u8>>,
}

const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let element = obj.element_opt(tag).ok().flatten()?;
    let value = element.to_str().ok()?;
    let trimmed = value.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

fn integer(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    let element = obj.element_opt(tag).ok().flatten()?;
    element.to_int::<i64>().ok()
}

fn required_uid(
    obj: &InMemDicomObject,
    tag: Tag,
    name: &'static str,
) -> Result<String, RefusalReason> {
    let value = text(obj, tag).ok_or(RefusalReason::MissingAttribute(name))?;
    check_uid(&value).map_err(|problem| RefusalReason::MalformedUid {
        attribute: name,
        value: value.clone(),
        problem,
    })?;
    if uid_has_leading_zero(&value) {
        tracing::warn!(attribute = name, uid = %value, "UID component with a leading zero (accepted)");
    }
    Ok(value)
}

fn is_bulk_vr(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB | VR::OW | VR::OF | VR::OD | VR::OL | VR::OV | VR::UN
    )
}

/// Remove values of `InlineBinary` longer than `threshold` bytes anywhere in
/// a DICOM JSON tree (bulk data in nested sequences, e.g. icon images).
fn strip_inline_binary(value: &mut serde_json::Value, threshold: usize) {
    match value {
        serde_json::Value::Object(map) => {
            let too_big = map
                .get("InlineBinary")
                .and_then(|v| v.as_str())
                .is_some_and(|b64| b64.len() / 4 * 3 > threshold);
            if too_big {
                map.remove("InlineBinary");
            }
            for v in map.values_mut() {
                strip_inline_binary(v, threshold);
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                strip_inline_binary(v, threshold);
            }
        }
        _ => {}
    }
}

/// Parse and validate Part-10 bytes (with or without the 128-byte preamble).
pub fn parse_part10(
    bytes: &[u8],
    bulk_data_threshold: usize,
) -> Result<ParsedObject, RefusalReason> {
    if bytes.is_empty() {
        return Err(RefusalReason::Empty);
    }
    let start = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        128
    } else if bytes.starts_with(b"DICM") {
        0
    } else {
        return Err(RefusalReason::NotDicom(
            "no \"DICM\" prefix after a 128-byte preamble (not a Part-10 file)".into(),
        ));
    };
    let checked = check_structure(&bytes[start + 4..])?;
    let pixel_data_vr = checked.pixel_data_vr;
    let pixel_value = checked.pixel_value;
    let unparseable = |e: &dyn std::error::Error| RefusalReason::Unparseable(error_chain(e));
    let (meta, mut obj) = match checked.inflated {
        None => {
            let file = OpenFileOptions::new()
                .read_preamble(ReadPreamble::Never)
                // The structure check has seen every element fit; the parser
                // needs to read only up to the pixel data.
                .read_until(tags::PIXEL_DATA)
                .from_reader(&bytes[start..])
                .map_err(|e| unparseable(&e))?;
            let meta = file.meta().clone();
            (meta, file.into_inner())
        }
        Some(inflated) => {
            let meta = FileMetaTable::from_reader(&bytes[start..]).map_err(|e| unparseable(&e))?;
            let explicit =
                dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
            let obj = InMemDicomObject::read_dataset_with_ts(&inflated[..], &explicit)
                .map_err(|e| unparseable(&e))?;
            (meta, obj)
        }
    };
    let transfer_syntax_uid = meta
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_owned();
    let meta_instance_uid = meta
        .media_storage_sop_instance_uid()
        .trim_end_matches(['\0', ' '])
        .to_owned();

    let attributes = InstanceAttributes {
        sop_class_uid: required_uid(&obj, tags::SOP_CLASS_UID, "SOPClassUID")?,
        sop_instance_uid: required_uid(&obj, tags::SOP_INSTANCE_UID, "SOPInstanceUID")?,
        study_instance_uid: required_uid(&obj, tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?,
        series_instance_uid: required_uid(&obj, tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?,
        transfer_syntax_uid,
        specific_character_set: text(&obj, tags::SPECIFIC_CHARACTER_SET),
        patient_id: text(&obj, tags::PATIENT_ID),
        issuer_of_patient_id: text(&obj, tags::ISSUER_OF_PATIENT_ID),
        patient_name: text(&obj, tags::PATIENT_NAME),
        patient_birth_date: text(&obj, tags::PATIENT_BIRTH_DATE),
        patient_sex: text(&obj, tags::PATIENT_SEX),
        study_date: text(&obj, tags::STUDY_DATE),
        study_time: text(&obj, tags::STUDY_TIME),
        accession_number: text(&obj, tags::ACCESSION_NUMBER),
        study_id: text(&obj, tags::STUDY_ID),
        study_description: text(&obj, tags::STUDY_DESCRIPTION),
        referring_physician_name: text(&obj, tags::REFERRING_PHYSICIAN_NAME),
        modality: text(&obj, tags::MODALITY),
        series_number: integer(&obj, tags::SERIES_NUMBER),
        series_description: text(&obj, tags::SERIES_DESCRIPTION),
        body_part_examined: text(&obj, tags::BODY_PART_EXAMINED),
        series_date: text(&obj, tags::SERIES_DATE),
        instance_number: integer(&obj, tags::INSTANCE_NUMBER),
        content_date: text(&obj, tags::CONTENT_DATE),
        rows: integer(&obj, tags::ROWS),
        columns: integer(&obj, tags::COLUMNS),
        number_of_frames: integer(&obj, tags::NUMBER_OF_FRAMES),
    };
    if !meta_instance_uid.is_empty() && meta_instance_uid != attributes.sop_instance_uid {
        tracing::warn!(
            meta = %meta_instance_uid,
            dataset = %attributes.sop_instance_uid,
            "MediaStorageSOPInstanceUID differs from SOPInstanceUID; the data set's is used"
        );
    }

    let pixel_planes = pixel_value.and_then(|v| {
        // Colour samples stored pixel by pixel (Planar Configuration 0) are
        // split into planes along with the bytes of each sample.
        let interleaved_samples = match integer(&obj, tags::PLANAR_CONFIGURATION) {
            Some(1) => 1,
            _ => integer(&obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1),
        };
        // Offsets in `bytes`: the value's, after the preamble and `DICM`.
        PixelPlanes::for_value(
            start + 4 + v.start,
            v.len(),
            integer(&obj, tags::BITS_ALLOCATED),
            interleaved_samples,
        )
    });

    // Before the bulk data goes: the EncapsulatedDocument is bulk data.
    let document = document::extract(&obj, &attributes.sop_class_uid);

    // Drop top-level bulk data before serialising: no point base64-encoding
    // megabytes of pixels only to throw them away.
    let bulk: Vec<(Tag, VR)> = obj
        .iter()
        .filter(|e| {
            e.header().tag == tags::PIXEL_DATA
                || (is_bulk_vr(e.vr())
                    && e.value()
                        .primitive()
                        .is_none_or(|p| p.calculate_byte_len() > bulk_data_threshold))
        })
        .map(|e| (e.header().tag, e.vr()))
        .collect();
    for (tag, _) in &bulk {
        obj.remove_element(*tag);
    }
    let mut json = dicom_json::to_value(&obj).map_err(|e| {
        RefusalReason::Unparseable(format!("cannot express the data set as DICOM JSON: {e}"))
    })?;
    strip_inline_binary(&mut json, bulk_data_threshold);
    if let serde_json::Value::Object(map) = &mut json {
        if let Some(vr) = pixel_data_vr {
            map.insert(
                "7FE00010".into(),
                serde_json::json!({ "vr": vr.to_string() }),
            );
        }
        for (tag, vr) in bulk {
            map.insert(
                format!("{:04X}{:04X}", tag.group(), tag.element()),
                serde_json::json!({ "vr": vr.to_string() }),
            );
        }
    }
    let metadata_json = serde_json::to_string(&json).expect("JSON values always serialise");
    Ok(ParsedObject {
        attributes,
        metadata_json,
        document,
        pixel_planes,
    })
}
