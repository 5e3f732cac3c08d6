//! Properties of the FHIR mapping: whatever JSON a client posts, mapping
//! it answers (a message or a refusal) without panicking; FHIR times
//! survive the trip through the archive's time form; search dates of any
//! precision give a non-empty range.

use std::collections::HashMap;

use pacs_viewer_api::fhir::resources::{
    archive_time_to_fhir, bundle_entries, fhir_time_to_archive, message_from,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Keys FHIR resources use, so random documents reach deep into the
/// mapping instead of failing at the first lookup.
const KEYS: &[&str] = &[
    "resourceType",
    "type",
    "entry",
    "resource",
    "fullUrl",
    "request",
    "method",
    "id",
    "subject",
    "reference",
    "identifier",
    "system",
    "value",
    "result",
    "contained",
    "code",
    "coding",
    "text",
    "display",
    "status",
    "effectiveDateTime",
    "effectivePeriod",
    "start",
    "issued",
    "valueQuantity",
    "valueString",
    "valueCodeableConcept",
    "valueInteger",
    "valueBoolean",
    "valueDateTime",
    "valuePeriod",
    "comparator",
    "unit",
    "referenceRange",
    "low",
    "high",
    "interpretation",
    "note",
    "presentedForm",
    "contentType",
    "data",
    "conclusion",
    "basedOn",
    "imagingStudy",
    "name",
    "family",
    "given",
    "birthDate",
    "gender",
];

const WORDS: &[&str] = &[
    "Bundle",
    "transaction",
    "batch",
    "Patient",
    "DiagnosticReport",
    "Observation",
    "#p",
    "#o",
    "p",
    "o",
    "urn:uuid:1",
    "urn:uuid:2",
    "Patient/1",
    "Observation/o",
    "POST",
    "final",
    "corrected",
    "amended",
    "2024-01-15",
    "2024-01-15T10:30:00Z",
    "2024-13-99T99:99",
    "",
    "PLAC",
    "ACSN",
    "urn:dicom:uid",
    "text/plain",
    "aGVsbG8=",
    "<",
    "http://loinc.org",
    "718-7",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        proptest::sample::select(WORDS).prop_map(|w| json!(w)),
        any::<i32>().prop_map(|n| json!(n)),
        (-1.0e6f64..1.0e6).prop_map(|f| json!(f)),
        any::<bool>().prop_map(|b| json!(b)),
        Just(Value::Null),
        ".{0,8}".prop_map(|s| json!(s)),
    ]
}

fn document() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 96, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..6).prop_map(
                |pairs| {
                    let mut m = Map::new();
                    for (k, v) in pairs {
                        m.insert(k.to_string(), v);
                    }
                    Value::Object(m)
                }
            ),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_posted_json_is_mapped_or_refused(doc in document(), as_bundle in any::<bool>()) {
        let mut doc = doc;
        if let Value::Object(m) = &mut doc {
            m.insert(
                "resourceType".into(),
                json!(if as_bundle { "Bundle" } else { "DiagnosticReport" }),
            );
        }
        let posted = if as_bundle {
            match bundle_entries(&doc) {
                Ok(entries) => entries,
                Err(_) => return Ok(()),
            }
        } else {
            vec![(&doc, None)]
        };
        if let Ok(p) = message_from(&posted, &HashMap::new(), "fhir:t".into(), "c".into(), "Bundle") {
            // What was mapped names a patient and has one target per entry.
            prop_assert_eq!(p.entries.len(), posted.len());
            prop_assert!(p.message.patients.iter().all(|g| !g.patient.id.trim().is_empty()));
            prop_assert!(p.message.patients.iter().any(|g| !g.reports.is_empty()));
        }
    }

    #[test]
    fn fhir_times_survive_the_archive_form(
        y in 1900u32..2100, m in 1u32..=12, d in 1u32..=28,
        h in 0u32..24, mi in 0u32..60, s in 0u32..60,
        fraction in proptest::option::of("[0-9]{1,4}"),
        zone_minutes in -12i32 * 60..=14 * 60,
    ) {
        let zone = format!(
            "{}{:02}:{:02}",
            if zone_minutes < 0 { '-' } else { '+' },
            zone_minutes.abs() / 60,
            zone_minutes.abs() % 60
        );
        let frac = fraction.map(|f| format!(".{f}")).unwrap_or_default();
        let t = format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{zone}");
        let stored = fhir_time_to_archive(&t).unwrap();
        let digits = format!("{y:04}{m:02}{d:02}{h:02}{mi:02}{s:02}");
        prop_assert!(stored.starts_with(&digits));
        prop_assert_eq!(archive_time_to_fhir(&stored), Some(t.clone()));
        let date = format!("{y:04}-{m:02}-{d:02}");
        prop_assert_eq!(archive_time_to_fhir(&fhir_time_to_archive(&date).unwrap()), Some(date));
    }

    #[test]
    fn stored_times_read_as_fhir_or_not_at_all(s in "[0-9+.-]{0,24}") {
        if let Some(t) = archive_time_to_fhir(&s) {
            // What is written as FHIR reads back to the same digits.
            let again = fhir_time_to_archive(&t).unwrap();
            let digits = |x: &str| x.chars().take_while(|c| c.is_ascii_digit()).collect::<String>();
            prop_assert!(digits(&again).starts_with(&digits(&s)), "{} -> {} -> {}", s, t, again);
        }
    }
}
