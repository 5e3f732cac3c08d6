//! The ER7 parser and the ORU^R01 reader: delimiters, escapes,
//! repetitions, several order groups with OBX and NTE, character sets, and
//! the error (and so ACK class) of each broken input.

use pacs_hl7_gateway::ack::{Responder, build_ack, nak_for};
use pacs_hl7_gateway::oru::{ObservationStatus, ObservationValue, OruMessage, report_text};
use pacs_hl7_gateway::parse::{Charset, parse, read_header};
use pacs_hl7_gateway::{AckCode, ErrorCode, Hl7Error};

fn cr(lines: &[&str]) -> Vec<u8> {
    lines.join("\r").into_bytes()
}

/// Two order groups, NTE on PID, OBR and OBX, repetitions, escapes, SN,
/// CWE, TX, a corrected value.
fn lab_message() -> Vec<u8> {
    cr(&[
        r"MSH|^~\&|LIS|LAB^1.2.3^ISO|PACS|RAD|20240305101500+0100||ORU^R01^ORU_R01|CTRL-1|P|2.5.1||||||UNICODE UTF-8",
        r"PID|1||12345^^^HOSP^MR~987-65-4321^^^SSA^SS~^^^EMPTY^XX||Müller^Jürgen^K^Jr^Dr~MUELLER^JUERGEN||19580314|M",
        r"NTE|1||patient note",
        r"PV1|1|O",
        r"ORC|RE|PL-ORC|FI-ORC",
        r"OBR|1||FIL-1|58410-2^CBC panel^LN|||20240305093000|||||||||||||||20240305101000|||F",
        r"NTE|1||order note one~order note two",
        r"OBX|1|NM|718-7^Hemoglobin^LN||11.2|g/dL^g/dL^UCUM|12.0-17.5|L~A|||C|||20240305093000",
        r"NTE|1||Corrected: was 13.1 g/dL \T\ re-run",
        r"OBX|2|SN|33914-3^eGFR^LN||>^60|mL/min|>60|N|||F",
        r"OBX|3|SN|5196-1^Ratio^LN||^1^:^128||||||F",
        r"OBX|4|CWE|882-1^ABO+Rh group^LN||278149003^Blood group A Rh(D) positive^SCT~O^Other^L||||||F",
        r"OBX|5|ST|5778-6^Color of Urine^LN||Yellow \S\ clear, 5\F\6 \E\ ok||||||P",
        r"OBR|2|PL-2|FIL-2|24627-2^CT chest^LN|||20240305080000|||||||||||ACC-77||||||F",
        r"OBX|1|TX|18782-3^Findings^LN|1|Line one~Line two \T\ more|||||F",
        r"OBX|2|FT|19005-8^Impression^LN|2|IMPRESSION:\.br\No acute findings.\.sp 2\End.||||||F",
        r"OBX|3|CE|59776-5^Code^LN||N^Normal^L||||||F",
    ])
}

#[test]
fn typed_accessors_follow_hl7_numbering() {
    let msg = parse(&lab_message()).unwrap();
    let msh = msg.segment("MSH").unwrap();
    assert_eq!(msh.field(1).raw(), "|");
    assert_eq!(msh.field(2).raw(), r"^~\&");
    assert_eq!(msh.field(2).repetitions().count(), 1, "MSH-2 is literal");
    assert_eq!(msh.field(4).component(2).value(), "1.2.3");
    assert_eq!(msh.field(9).component(2).value(), "R01");
    assert_eq!(msh.field(18).value(), "UNICODE UTF-8");
    let h = msg.header();
    assert_eq!(h.control_id, "CTRL-1");
    assert_eq!(h.version, "2.5.1");
    assert_eq!(h.message_type.to_string(), "ORU^R01^ORU_R01");
    assert_eq!(h.charset, Charset::Utf8);
    assert_eq!(h.key().sending_facility, "LAB^1.2.3^ISO");
    let pid = msg.segment("PID").unwrap();
    let ids: Vec<String> = pid
        .field(3)
        .repetitions()
        .map(|r| r.component(1).value().into_owned())
        .collect();
    assert_eq!(ids, ["12345", "987-65-4321", ""]);
    assert_eq!(pid.field(5).repetition(2).component(1).value(), "MUELLER");
    assert_eq!(pid.field(5).component(2).value(), "Jürgen");
    assert!(pid.field(99).is_empty());
    assert_eq!(msg.segments_named("OBX").count(), 8);
    assert_eq!(msg.segments().count(), 17);
}

#[test]
fn oru_model_of_two_order_groups() {
    let oru = OruMessage::parse(&lab_message()).unwrap();
    let p = oru.patient();
    assert_eq!(
        p.identifiers.len(),
        2,
        "the repetition without an id is skipped"
    );
    assert_eq!(p.identifiers[0].id, "12345");
    assert_eq!(p.identifiers[0].assigning_authority, "HOSP");
    assert_eq!(p.identifiers[0].identifier_type, "MR");
    assert_eq!(p.identifiers[1].assigning_authority, "SSA");
    let name = p.name().unwrap();
    assert_eq!(
        (name.family.as_str(), name.given.as_str()),
        ("Müller", "Jürgen")
    );
    assert_eq!(name.to_dicom_pn(), "Müller^Jürgen^K^Dr^Jr");
    assert_eq!(p.names.len(), 2);
    assert_eq!(p.birth_date.as_deref(), Some("19580314"));
    assert_eq!(p.sex.as_deref(), Some("M"));
    assert_eq!(p.notes, ["patient note"]);

    let orders: Vec<_> = oru.orders().collect();
    assert_eq!(orders.len(), 2);
    let cbc = orders[0];
    assert_eq!(
        cbc.placer_order_number.as_deref(),
        Some("PL-ORC"),
        "ORC-2 fills in"
    );
    assert_eq!(cbc.filler_order_number.as_deref(), Some("FIL-1"));
    assert_eq!(
        cbc.accession_number.as_deref(),
        Some("FIL-1"),
        "no OBR-18: the filler number"
    );
    assert_eq!(cbc.universal_service.code, "58410-2");
    assert_eq!(cbc.universal_service.coding_system, "LN");
    assert_eq!(cbc.observation_time.as_deref(), Some("20240305093000"));
    assert_eq!(cbc.result_status.as_deref(), Some("F"));
    assert_eq!(cbc.notes, ["order note one\norder note two"]);
    assert_eq!(cbc.observations.len(), 5);

    let hgb = &cbc.observations[0];
    assert_eq!(hgb.identifier.code, "718-7");
    assert_eq!(hgb.identifier.coding_system, "LN");
    let ObservationValue::Numeric(v) = &hgb.values[0] else {
        panic!("{:?}", hgb.values)
    };
    assert_eq!((v.text.as_str(), v.value), ("11.2", 11.2));
    assert_eq!(hgb.units.as_ref().unwrap().code, "g/dL");
    assert_eq!(hgb.reference_range.as_deref(), Some("12.0-17.5"));
    assert_eq!(hgb.abnormal_flags, ["L", "A"]);
    assert_eq!(hgb.status, Some(ObservationStatus::Corrected));
    assert_eq!(hgb.observation_time.as_deref(), Some("20240305093000"));
    assert_eq!(hgb.notes, ["Corrected: was 13.1 g/dL & re-run"]);

    let ObservationValue::StructuredNumeric(sn) = &cbc.observations[1].values[0] else {
        panic!()
    };
    assert_eq!(sn.comparator, ">");
    assert_eq!(sn.number.as_ref().unwrap().value, 60.0);
    assert_eq!(cbc.observations[1].values[0].display(), ">60");
    assert_eq!(cbc.observations[2].values[0].display(), "1:128");
    let coded: Vec<_> = cbc.observations[3]
        .values
        .iter()
        .map(|v| match v {
            ObservationValue::Coded(c) => (c.code.clone(), c.coding_system.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        coded,
        [("278149003".into(), "SCT".into()), ("O".into(), "L".into())]
    );
    assert_eq!(
        cbc.observations[4].values,
        [ObservationValue::Text("Yellow ^ clear, 5|6 \\ ok".into())]
    );
    assert_eq!(
        cbc.observations[4].status,
        Some(ObservationStatus::Preliminary)
    );
    assert_eq!(report_text(cbc), None, "no TX/FT in the blood count");

    let ct = orders[1];
    assert_eq!(
        ct.accession_number.as_deref(),
        Some("ACC-77"),
        "OBR-18 wins"
    );
    assert_eq!(ct.placer_order_number.as_deref(), Some("PL-2"));
    assert_eq!(
        report_text(ct).unwrap(),
        "Line one\nLine two & more\nIMPRESSION:\nNo acute findings.\n\n\nEnd."
    );
}

#[test]
fn custom_delimiters() {
    // field #, component $, repetition %, escape !, subcomponent *
    let msg = cr(&[
        "MSH#$%!*#LAB#FAC###20240101##ORU$R01#C9#P#2.4",
        "PID#1##A1$$$AUTH*1.2*ISO$MR%B2$$$OTHER##Doe$Jane##19700101#F",
        "OBR#1##F1#GLU$Glucose$L",
        "OBX#1#ST#NOTE$Note$L##a !F! b !S! c !T! d !R! e !E! f !.br!g#####F",
    ]);
    let m = parse(&msg).unwrap();
    let d = m.delimiters();
    assert_eq!(
        (d.field, d.component, d.repetition, d.escape, d.subcomponent),
        ('#', '$', '%', '!', '*')
    );
    let oru = OruMessage::from_message(&m).unwrap();
    let p = oru.patient();
    assert_eq!(p.identifiers.len(), 2);
    assert_eq!(p.identifiers[0].assigning_authority, "AUTH");
    assert_eq!(p.name().unwrap().given, "Jane");
    let obx = &oru.orders().next().unwrap().observations[0];
    assert_eq!(
        obx.values,
        [ObservationValue::Text("a # b $ c * d % e ! f \ng".into())]
    );
    // The ACK speaks the sender's delimiters.
    let ack = build_ack(
        Some(m.header()),
        None,
        &Responder {
            application: "PACS".into(),
            facility: String::new(),
        },
        "ID1",
        "20240101000000+0000",
    );
    let ack = String::from_utf8(ack).unwrap();
    assert!(ack.starts_with("MSH#$%!*#PACS##LAB#FAC#"), "{ack}");
    assert!(ack.ends_with("\rMSA#AA#C9"), "{ack}");
}

#[test]
fn segment_separators_are_read_leniently() {
    let crlf = lab_message()
        .split(|&b| b == b'\r')
        .collect::<Vec<_>>()
        .join(&b"\r\n"[..]);
    let lf = lab_message()
        .split(|&b| b == b'\r')
        .collect::<Vec<_>>()
        .join(&b"\n"[..]);
    let mut trailing = lab_message();
    trailing.extend_from_slice(b"\r\r\n");
    let reference = OruMessage::parse(&lab_message()).unwrap();
    for variant in [crlf, lf, trailing] {
        assert_eq!(OruMessage::parse(&variant).unwrap(), reference);
    }
}

#[test]
fn latin1_and_charset_errors() {
    let mut latin1 =
        b"MSH|^~\\&|LAB||||20240101||ORU^R01|L1|P|2.5||||||8859/1\rPID|1||X1||M".to_vec();
    latin1.extend([0xFC]); // ü
    latin1.extend(b"ller^J\rOBR|1||F|C^T^L");
    let oru = OruMessage::parse(&latin1).unwrap();
    assert_eq!(oru.patient().name().unwrap().family, "Müller");
    let ack = build_ack(
        Some(&oru.header),
        None,
        &Responder {
            application: "PACS".into(),
            facility: String::new(),
        },
        "A",
        "T",
    );
    assert!(
        ack.windows(10).any(|w| w == b"|||8859/1\r"),
        "the ACK declares the sender's character set"
    );

    // The same bytes declared UTF-8 are an error (AR).
    let utf8 = String::from_utf8_lossy(&latin1)
        .replace("8859/1", "UNICODE UTF-8")
        .replace('\u{FFFD}', "\u{1}");
    let mut bad = utf8.into_bytes();
    let at = bad.iter().position(|&b| b == 1).unwrap();
    bad[at] = 0xFC;
    let err = parse(&bad).unwrap_err();
    assert!(
        matches!(err, Hl7Error::InvalidText { offset, .. } if offset == at),
        "{err:?}"
    );
    assert_eq!(nak_for(&err).ack_code, AckCode::AR);
    // Undeclared (ASCII default): also read as UTF-8, so also an error.
    let undeclared = String::from_utf8_lossy(&bad).replace("UNICODE UTF-8", "");
    let mut undeclared = undeclared.replace('\u{FFFD}', "\u{1}").into_bytes();
    let at = undeclared.iter().position(|&b| b == 1).unwrap();
    undeclared[at] = 0xFC;
    assert!(matches!(
        parse(&undeclared),
        Err(Hl7Error::InvalidText { .. })
    ));

    let unknown = cr(&[
        "MSH|^~\\&|LAB||||20240101||ORU^R01|L2|P|2.5||||||ISO IR87",
        "PID|1||X",
    ]);
    let err = parse(&unknown).unwrap_err();
    assert_eq!(err, Hl7Error::UnsupportedCharset("ISO IR87".into()));
    assert_eq!(nak_for(&err).error, ErrorCode::TableValueNotFound);
}

#[test]
fn escape_sequences() {
    let msg = cr(&[
        r"MSH|^~\&|LAB||||20240101||ORU^R01|E1|P|2.5.1||||||UNICODE UTF-8",
        r"PID|1||X1",
        r"OBR|1||F|C^T^L",
        r"OBX|1|FT|C^T^L||\H\Bold\N\ text\.br\x\XC3A9\y \Xzz\ \C2842\ \.in+4\ \Z99\ \unterminated",
    ]);
    let oru = OruMessage::parse(&msg).unwrap();
    let v = &oru.orders().next().unwrap().observations[0].values[0];
    assert_eq!(
        v,
        &ObservationValue::Text("Bold text\nxéy \\Xzz\\    \\unterminated".into())
    );
}

/// Each broken input and its answer class and code.
#[test]
fn errors_and_their_ack_class() {
    let good_msh = r"MSH|^~\&|LAB|FAC|||20240101||ORU^R01|C1|P|2.5.1";
    let cases: Vec<(Vec<u8>, AckCode, u16)> = vec![
        (cr(&["PID|1||X", "OBR|1"]), AckCode::AR, 100),
        (cr(&["MSH|^~\\&"]), AckCode::AR, 102),
        (cr(&["MSH|^~|LAB", "PID|1||X"]), AckCode::AR, 102),
        (cr(&["MSH|^^\\&|LAB", "PID|1||X"]), AckCode::AR, 102),
        (cr(&["MSHA^~\\&ALAB", "PID|1||X"]), AckCode::AR, 102),
        (
            cr(&["MSH|^~\\&|LAB|FAC|||20240101||ORU^R01||P|2.5.1", "PID|1||X"]),
            AckCode::AR,
            101,
        ),
        (
            cr(&["MSH|^~\\&|LAB|FAC|||20240101||ORU^R01|C1|P|2.6", "PID|1||X"]),
            AckCode::AR,
            203,
        ),
        (
            cr(&[
                "MSH|^~\\&|LAB|FAC|||20240101||ADT^A01|C1|P|2.5.1",
                "PID|1||X",
            ]),
            AckCode::AR,
            200,
        ),
        (
            cr(&[
                "MSH|^~\\&|LAB|FAC|||20240101||ORU^R30|C1|P|2.5.1",
                "PID|1||X",
            ]),
            AckCode::AR,
            201,
        ),
        // Wrong delimiters: the body written with other ones than MSH says.
        (
            cr(&[good_msh, "PID!1!!X1", "OBR!1!!F!C^T^L"]),
            AckCode::AR,
            100,
        ),
        (
            cr(&[good_msh, "OBR|1||F|C^T^L", "OBX|1|NM|C^T^L||1"]),
            AckCode::AE,
            100,
        ),
        (
            cr(&[good_msh, "PID|1||^^^HOSP^MR", "OBR|1||F|C^T^L"]),
            AckCode::AE,
            101,
        ),
        (cr(&[good_msh, "PID|1||X"]), AckCode::AE, 100),
        (
            cr(&[good_msh, "PID|1||X", "OBX|1|NM|C^T^L||1"]),
            AckCode::AE,
            100,
        ),
        (cr(&[good_msh, "PID|1||X", "OBR|1||F|"]), AckCode::AE, 101),
        (
            cr(&[good_msh, "PID|1||X", "OBR|1||F|C", "OBX|1|NM|||1"]),
            AckCode::AE,
            101,
        ),
        (
            cr(&[good_msh, "PID|1||X", "OBR|1||F|C", "OBX|1|NM|C||<5"]),
            AckCode::AE,
            102,
        ),
    ];
    for (i, (bytes, class, code)) in cases.iter().enumerate() {
        let err = OruMessage::parse(bytes).expect_err(&format!("case {i} parsed"));
        let nak = nak_for(&err);
        assert_eq!(
            (nak.ack_code, nak.error.code()),
            (*class, *code),
            "case {i}: {err}"
        );
    }
}

#[test]
fn header_stays_readable_when_the_body_is_not() {
    let mut msg = cr(&[
        r"MSH|^~\&|LAB|FAC|PACS||20240101||ORU^R01|C7|P|2.3",
        "PID|1||X",
    ]);
    msg.push(0xFF);
    assert!(parse(&msg).is_err());
    let h = read_header(&msg).unwrap();
    assert_eq!(h.control_id, "C7");
    let nak = nak_for(&parse(&msg).unwrap_err());
    let ack = build_ack(
        Some(&h),
        Some(&nak),
        &Responder {
            application: "X".into(),
            facility: String::new(),
        },
        "A9",
        "T",
    );
    let ack = String::from_utf8(ack).unwrap();
    let segs: Vec<&str> = ack.split('\r').collect();
    assert_eq!(segs[0], "MSH|^~\\&|PACS||LAB|FAC|T||ACK^R01|A9|P|2.3");
    assert!(segs[1].starts_with("MSA|AR|C7|"), "{}", segs[1]);
    assert!(
        segs[2].starts_with("ERR|^^^102&Data type error&HL70357"),
        "{}",
        segs[2]
    );
}

/// Nothing a peer sends may panic the parser: every prefix and many
/// single-byte corruptions of real messages.
#[test]
fn mutations_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut inputs = pacs_fixtures::hl7::oru_messages(3, 8);
    inputs.push(lab_message());
    let specials = [
        b'|', b'^', b'~', b'\\', b'&', b'\r', b'\n', 0x0B, 0x1C, 0xFF, 0xC3, b'X', b'0',
    ];
    for msg in &inputs {
        for cut in (0..msg.len()).step_by(7) {
            let _ = OruMessage::parse(&msg[..cut]);
        }
        for _ in 0..300 {
            let mut m = msg.clone();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..m.len());
                m[at] = specials[rng.gen_range(0..specials.len())];
            }
            if let Err(e) = OruMessage::parse(&m) {
                let _ = nak_for(&e);
            }
        }
    }
}
