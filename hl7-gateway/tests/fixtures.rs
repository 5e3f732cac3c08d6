//! The HL7 fixtures read back through the gateway's parser: what a lab or
//! RIS would send, and what the archive will get from it.

use pacs_fixtures::DatasetSpec;
use pacs_fixtures::hl7::{
    OruKind, basic_metabolic_panel, complete_blood_count, corrected_result, oru_messages,
    radiology_report, radiology_report_for_study,
};
use pacs_hl7_gateway::Charset;
use pacs_hl7_gateway::oru::{ObservationStatus, ObservationValue, OruMessage, report_text};

const SEED: u64 = 11;

fn numeric(v: &ObservationValue) -> f64 {
    match v {
        ObservationValue::Numeric(d) => d.value,
        other => panic!("not NM: {other:?}"),
    }
}

#[test]
fn every_fixture_is_a_valid_oru_r01() {
    let messages = oru_messages(SEED, 40);
    assert_eq!(messages, oru_messages(SEED, 40), "deterministic");
    let mut charsets = std::collections::BTreeSet::new();
    for (n, m) in messages.iter().enumerate() {
        let oru = OruMessage::parse(m).unwrap_or_else(|e| panic!("message {n}: {e}"));
        charsets.insert(format!("{:?}", oru.header.charset));
        let p = oru.patient();
        assert!(!p.identifiers[0].id.is_empty());
        assert!(!p.name().unwrap().family.is_empty());
        let order = oru.orders().next().unwrap();
        assert!(!order.observations.is_empty());
        match OruKind::of(n) {
            OruKind::RadiologyReport => assert!(report_text(order).is_some()),
            _ => assert!(report_text(order).is_none()),
        }
    }
    // ASCII (no MSH-18), 8859/1 and UTF-8 patients all occur.
    assert_eq!(charsets.len(), 3, "{charsets:?}");
}

#[test]
fn blood_count_has_loinc_units_ranges_and_flags() {
    let mut flagged = 0;
    for n in 0..20 {
        let oru = OruMessage::parse(&complete_blood_count(SEED, n)).unwrap();
        let order = oru.orders().next().unwrap();
        assert_eq!(order.universal_service.code, "58410-2");
        let codes: Vec<&str> = order
            .observations
            .iter()
            .map(|o| o.identifier.code.as_str())
            .collect();
        for code in ["6690-2", "789-8", "718-7", "4544-3", "777-3"] {
            assert!(codes.contains(&code), "{code} missing");
        }
        for obx in &order.observations {
            assert_eq!(obx.identifier.coding_system, "LN");
            assert_eq!(obx.value_type, "NM");
            assert_eq!(obx.status, Some(ObservationStatus::Final));
            let value = numeric(&obx.values[0]);
            let (low, high) = obx
                .reference_range
                .as_deref()
                .unwrap()
                .split_once('-')
                .unwrap();
            let (low, high): (f64, f64) = (low.parse().unwrap(), high.parse().unwrap());
            let expected = if value < low {
                "L"
            } else if value > high {
                "H"
            } else {
                "N"
            };
            assert_eq!(obx.abnormal_flags, [expected], "{obx:?}");
            flagged += usize::from(expected != "N");
            assert!(!obx.units.as_ref().unwrap().code.is_empty());
        }
    }
    assert!(flagged > 5, "some results are out of range");
}

#[test]
fn metabolic_panel_has_sn_egfr_and_notes() {
    let oru = OruMessage::parse(&basic_metabolic_panel(SEED, 1)).unwrap();
    assert_eq!(oru.header.version, "2.3.1");
    let order = oru.orders().next().unwrap();
    assert_eq!(order.notes, ["Specimen: serum, fasting."]);
    let codes: Vec<&str> = order
        .observations
        .iter()
        .map(|o| o.identifier.code.as_str())
        .collect();
    for code in ["2345-7", "2951-2", "2823-3", "2160-0", "33914-3"] {
        assert!(codes.contains(&code), "{code} missing");
    }
    let egfr = order.observations.last().unwrap();
    assert!(matches!(
        egfr.values[0],
        ObservationValue::StructuredNumeric(_)
    ));
    assert_eq!(egfr.notes.len(), 1);
    assert!(egfr.notes[0].contains("injury & pregnancy"));
}

#[test]
fn correction_refers_to_the_original_order() {
    let original = OruMessage::parse(&complete_blood_count(SEED, 4)).unwrap();
    let corrected = OruMessage::parse(&corrected_result(SEED, 4)).unwrap();
    assert_ne!(original.header.control_id, corrected.header.control_id);
    assert_eq!(original.patient(), corrected.patient());
    let (a, b) = (
        original.orders().next().unwrap(),
        corrected.orders().next().unwrap(),
    );
    assert_eq!(a.filler_order_number, b.filler_order_number);
    assert_eq!(b.result_status.as_deref(), Some("C"));
    let hgb = |o: &pacs_hl7_gateway::oru::OrderGroup| {
        o.observations
            .iter()
            .find(|x| x.identifier.code == "718-7")
            .unwrap()
            .clone()
    };
    let (old, new) = (hgb(a), hgb(b));
    assert_eq!(old.status, Some(ObservationStatus::Final));
    assert_eq!(new.status, Some(ObservationStatus::Corrected));
    assert_ne!(numeric(&old.values[0]), numeric(&new.values[0]));
    let ObservationValue::Numeric(old_value) = &old.values[0] else {
        unreachable!()
    };
    assert!(new.notes[0].contains(&old_value.text), "{:?}", new.notes);
}

#[test]
fn radiology_report_matches_its_dicom_study() {
    let spec = DatasetSpec::small();
    let files: Vec<_> = spec.iter().collect();
    for study in 0..3 {
        let oru = OruMessage::parse(&radiology_report_for_study(&spec, study)).unwrap();
        let order = oru.orders().next().unwrap();
        let accession = order.accession_number.clone().unwrap();
        let dicom = files
            .iter()
            .map(|f| dicom_object::from_reader(&f.bytes[128..]).unwrap())
            .find(|o| {
                o.element_by_name("AccessionNumber")
                    .ok()
                    .and_then(|e| e.to_str().ok())
                    .is_some_and(|a| a.trim() == accession)
            })
            .unwrap_or_else(|| panic!("no DICOM study has accession {accession}"));
        let pid = dicom
            .element_by_name("PatientID")
            .unwrap()
            .to_str()
            .unwrap()
            .trim()
            .to_string();
        let id = &oru.patient().identifiers[0].id;
        if pid.is_empty() {
            assert!(id.starts_with("TMP"));
        } else {
            assert_eq!(*id, pid);
        }
        let text = report_text(order).unwrap();
        assert!(text.starts_with("FINDINGS:\n"), "{text}");
        assert!(text.contains("\nIMPRESSION:\n"), "{text}");
        assert!(text.lines().count() >= 5);
    }
}

#[test]
fn latin1_patients_are_sent_in_8859_1() {
    // Patient 0 is Müller^Jürgen (ISO_IR 100 in DICOM).
    let bytes = radiology_report(SEED, 0);
    assert!(bytes.contains(&0xFC), "ü as one ISO 8859-1 byte");
    let oru = OruMessage::parse(&bytes).unwrap();
    assert_eq!(oru.header.charset, Charset::Latin1);
    assert_eq!(oru.patient().name().unwrap().family, "Müller");
}
