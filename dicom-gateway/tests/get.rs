//! C-GET driven by DCMTK's getscu and by the crate's SCU: C-STORE
//! sub-operations on the same association, in the stored transfer syntax or
//! converted losslessly to one the peer accepted, only for SOP classes the
//! peer took the SCP role for.

mod common;

use common::{
    CALLING, IMPLICIT_VR_LE, Server, TestScu, dcmtk_tool, split_part10, study_identifier,
};
use dicom_ul::pdu::{PDataValueType, Pdu};
use pacs_dicom_gateway::dimse::{Command, field, tag};
use pacs_fixtures::{FixtureFile, Kind, ts};

/// The instances of the conversion tests: native syntaxes that re-encode,
/// RLE (grey and colour-by-plane) and JPEG baseline (grey and YBR colour)
/// that decode, each in its own study.
fn conversion_fixtures() -> Vec<FixtureFile> {
    vec![
        pacs_fixtures::single(Kind::Ct, ts::EXPLICIT_VR_LE, 11),
        pacs_fixtures::single(Kind::Mr, ts::EXPLICIT_VR_BE, 12),
        pacs_fixtures::single(Kind::Cr, ts::DEFLATED_EXPLICIT_VR_LE, 13),
        pacs_fixtures::single(Kind::Ct, ts::RLE_LOSSLESS, 14),
        pacs_fixtures::single(Kind::Us, ts::RLE_LOSSLESS, 15),
        pacs_fixtures::single(Kind::Ct, ts::JPEG_BASELINE, 16),
        pacs_fixtures::single(Kind::Us, ts::JPEG_BASELINE, 17),
    ]
}

fn parse_part10(bytes: &[u8]) -> dicom_object::DefaultDicomObject {
    dicom_object::OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Always)
        .from_reader(bytes)
        .expect("a Part-10 object")
}

fn int(object: &dicom_object::DefaultDicomObject, tag: dicom_core::Tag) -> usize {
    object
        .element(tag)
        .unwrap_or_else(|_| panic!("{tag} missing"))
        .to_int::<u32>()
        .unwrap() as usize
}

fn text(object: &dicom_object::DefaultDicomObject, tag: dicom_core::Tag) -> String {
    object
        .element(tag)
        .map(|e| e.to_str().unwrap().trim_end_matches(['\0', ' ']).to_owned())
        .unwrap_or_default()
}

/// dcmdump of a file's data set (not its meta group), values in full,
/// without what differs between two encodings of the same content: the
/// lengths, sequence/item delimiters and explicit/undefined length notes.
async fn content(path: &std::path::Path) -> Vec<String> {
    let (ok, dump) = dcmtk_tool("dcmdump", &["-q", "+L", path.to_str().unwrap()]).await;
    assert!(ok, "{dump}");
    let lines: Vec<String> = dump
        .lines()
        .filter(|l| l.trim_start().starts_with('('))
        .filter(|l| !l.trim_start().starts_with("(0002,"))
        .filter(|l| !l.contains("(fffe,e00d)") && !l.contains("(fffe,e0dd)"))
        .map(|l| {
            let l = l.split('#').next().unwrap_or_default().trim_end();
            l.replace("with explicit length ", "")
                .replace("with undefined length ", "")
        })
        .collect();
    assert!(lines.len() > 20, "{dump}");
    lines
}

/// Check a received Part-10 file (`bytes`, at `path`) against the fixture
/// it came from: native sources have the same content, decoded ones native
/// pixel data of the right size (RLE: the very pixels).
async fn assert_converted(
    f: &FixtureFile,
    path: &std::path::Path,
    got: &[u8],
    work: &std::path::Path,
) {
    let original = parse_part10(&f.bytes);
    let object = parse_part10(got);
    let native = [
        ts::EXPLICIT_VR_LE,
        ts::EXPLICIT_VR_BE,
        ts::DEFLATED_EXPLICIT_VR_LE,
    ];
    if native.contains(&f.transfer_syntax) {
        // Re-encoded: the same elements with the same values.
        let original_path = work.join("original.dcm");
        std::fs::write(&original_path, &f.bytes).unwrap();
        assert_eq!(
            content(path).await,
            content(&original_path).await,
            "{} changed in conversion",
            f.file_name
        );
        return;
    }
    // Decoded: native pixel data of the size the image module says.
    let (rows, columns) = (
        int(&object, dicom_core::Tag(0x0028, 0x0010)),
        int(&object, dicom_core::Tag(0x0028, 0x0011)),
    );
    let samples = int(&object, dicom_core::Tag(0x0028, 0x0002));
    let bits = int(&object, dicom_core::Tag(0x0028, 0x0100));
    let frames = object
        .element(dicom_core::Tag(0x0028, 0x0008))
        .map(|e| e.to_int::<u32>().unwrap() as usize)
        .unwrap_or(1);
    let pixels = object
        .element(dicom_core::Tag(0x7FE0, 0x0010))
        .unwrap()
        .to_bytes()
        .unwrap();
    assert_eq!(
        pixels.len(),
        rows * columns * samples * (bits / 8) * frames,
        "{}",
        f.file_name
    );
    assert_eq!(rows, int(&original, dicom_core::Tag(0x0028, 0x0010)));
    if samples == 3 {
        assert_eq!(text(&object, dicom_core::Tag(0x0028, 0x0004)), "RGB");
        assert_eq!(int(&object, dicom_core::Tag(0x0028, 0x0006)), 0);
    } else {
        assert_eq!(
            text(&object, dicom_core::Tag(0x0028, 0x0004)),
            text(&original, dicom_core::Tag(0x0028, 0x0004))
        );
    }
    if f.transfer_syntax == ts::JPEG_BASELINE {
        // Decoded lossy pixel data stays flagged as lossy.
        assert_eq!(text(&object, dicom_core::Tag(0x0028, 0x2110)), "01");
    } else {
        // RLE is lossless: exactly the pixels of the same image generated
        // natively (same kind and seed as in `conversion_fixtures`).
        let native_twin = pacs_fixtures::single(
            f.kind,
            ts::EXPLICIT_VR_LE,
            if f.kind == Kind::Us { 15 } else { 14 },
        );
        let twin = parse_part10(&native_twin.bytes);
        let expected = twin
            .element(dicom_core::Tag(0x7FE0, 0x0010))
            .unwrap()
            .to_bytes()
            .unwrap();
        assert!(pixels == expected, "{}: pixels differ", f.file_name);
        assert_ne!(text(&object, dicom_core::Tag(0x0028, 0x2110)), "01");
    }
}

/// getscu (DCMTK 3.6.7) cannot be limited to Implicit VR LE: its `+xi`
/// proposes Explicit VR LE alone for the storage contexts and `-xi` only
/// changes the C-GET context. `+xb` makes it propose Explicit VR Big Endian
/// first, which the gateway accepts: every instance not stored in Big
/// Endian has to be converted. (Implicit VR LE only: the crate's SCU below
/// and `storescp +xi` in tests/move.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getscu_taking_big_endian_gets_every_instance_converted() {
    if !common::dcmtk_tools(&["getscu", "dcmdump"]) {
        return;
    }
    let mut server = Server::start(|_| {}).await;
    let files = conversion_fixtures();
    store_all(&server, &files.iter().collect::<Vec<_>>()).await;
    let studies: Vec<&str> = files
        .iter()
        .map(|f| f.study_instance_uid.as_str())
        .collect();
    let out = tempfile::tempdir().unwrap();
    let port = server.port();
    let key = format!("StudyInstanceUID={}", studies.join("\\"));
    let (_, log) = dcmtk_tool(
        "getscu",
        &[
            "-d",
            "+xb",
            "-aet",
            CALLING,
            "-aec",
            "PACS",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &key,
            "-od",
            out.path().to_str().unwrap(),
            "127.0.0.1",
            &port,
        ],
    )
    .await;
    let received: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    assert_eq!(received.len(), files.len(), "{log}");
    // On the wire: Big Endian for every storage context, the syntax getscu
    // proposed first (and the gateway takes the first it supports).
    let accepted: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("Accepted Transfer Syntax:"))
        .map(|(_, ts)| ts.trim())
        .collect();
    assert!(
        accepted
            .iter()
            .filter(|ts| **ts == "=BigEndianExplicit")
            .count()
            > 100,
        "{accepted:?}"
    );
    let work = tempfile::tempdir().unwrap();
    for f in &files {
        let (path, got) = received
            .iter()
            .find(|(_, b)| {
                let object = parse_part10(b);
                text(&object, dicom_core::Tag(0x0008, 0x0018)) == f.sop_instance_uid
            })
            .unwrap_or_else(|| panic!("{} not received: {log}", f.file_name));
        let (got_ts, _) = split_part10(got);
        // getscu writes what it received: Big Endian.
        assert_eq!(got_ts, ts::EXPLICIT_VR_BE, "{}", f.file_name);
        assert_converted(f, path, got, work.path()).await;
    }
    assert!(!log.contains("Release Failed"), "{log}");
    let last = log
        .rfind("C-GET RSP")
        .unwrap_or_else(|| panic!("no C-GET response: {log}"));
    let final_part = &log[last..];
    assert!(
        final_part.contains("0x0000") || final_part.contains("Success"),
        "{final_part}"
    );
    server.shutdown().await;
}

const STUDY_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";

/// An SCU with the C-GET context and, for every SOP class of `files`, one
/// storage context per syntax of `syntaxes`; the SCP role is proposed for
/// the classes of `scp_role_for` only.
async fn get_scu(
    server: &Server,
    files: &[&FixtureFile],
    syntaxes: &[&str],
    scp_role_for: &[&FixtureFile],
) -> TestScu {
    let mut classes: Vec<&str> = files.iter().map(|f| f.sop_class_uid.as_str()).collect();
    classes.sort();
    classes.dedup();
    let mut contexts = vec![(STUDY_ROOT_GET, ts::IMPLICIT_VR_LE)];
    for class in &classes {
        for syntax in syntaxes {
            contexts.push((class, syntax));
        }
    }
    let mut roles: Vec<&str> = scp_role_for
        .iter()
        .map(|f| f.sop_class_uid.as_str())
        .collect();
    roles.dedup();
    if roles.is_empty() {
        // No role selection item at all.
        TestScu::connect(server.addr, &contexts).await.unwrap()
    } else {
        TestScu::connect_with_scp_roles(server.addr, &contexts, &roles)
            .await
            .unwrap()
    }
}

async fn store_all(server: &Server, files: &[&FixtureFile]) {
    for f in files {
        let (syntax, data) = split_part10(&f.bytes);
        let mut scu = TestScu::connect(server.addr, &[(f.sop_class_uid.as_str(), syntax.as_str())])
            .await
            .unwrap();
        let rsp = scu.store(&f.sop_class_uid, &f.sop_instance_uid, data).await;
        assert_eq!(rsp.us(tag::STATUS), Some(0));
        scu.association.release().await.unwrap();
    }
}

fn studies(files: &[&FixtureFile]) -> Vec<u8> {
    let uids: Vec<&str> = files
        .iter()
        .map(|f| f.study_instance_uid.as_str())
        .collect();
    study_identifier(&uids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_without_a_lossless_conversion_counts_those_instances_failed() {
    let mut server = Server::start(|_| {}).await;
    // The peer takes JPEG baseline only: the JPEG instance goes as stored;
    // native and RLE instances have no lossless way there (never native or
    // RLE to a lossy syntax).
    let jpeg = pacs_fixtures::single(Kind::Ct, ts::JPEG_BASELINE, 7);
    let explicit = pacs_fixtures::single(Kind::Ct, ts::EXPLICIT_VR_LE, 8);
    let rle = pacs_fixtures::single(Kind::Mr, ts::RLE_LOSSLESS, 9);
    let members = [&jpeg, &explicit, &rle];
    store_all(&server, &members).await;
    let mut scu = get_scu(&server, &members, &[ts::JPEG_BASELINE], &members).await;
    let got = scu.retrieve(STUDY_ROOT_GET, None, &studies(&members)).await;
    scu.association.release().await.unwrap();
    assert_eq!(got.status(), 0xB000, "{got:?}");
    assert_eq!(got.counts(), (Some(1), Some(2), Some(0)), "{got:?}");
    assert_eq!(got.pending.len(), members.len() - 1, "{got:?}");
    assert_eq!(got.stored, [jpeg.sop_instance_uid.as_str()]);
    // The Failed SOP Instance UID List is logged, not sent, for C-GET
    // (getscu cannot read it; see services/get.rs).
    assert_eq!(got.identifier, None);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_where_every_sub_operation_fails_is_refused_a702_with_counts() {
    let mut server = Server::start(|_| {}).await;
    let explicit = pacs_fixtures::single(Kind::Ct, ts::EXPLICIT_VR_LE, 7);
    let rle = pacs_fixtures::single(Kind::Mr, ts::RLE_LOSSLESS, 8);
    let members = [&explicit, &rle];
    store_all(&server, &members).await;
    let mut scu = get_scu(&server, &members, &[ts::JPEG_BASELINE], &members).await;
    let got = scu.retrieve(STUDY_ROOT_GET, None, &studies(&members)).await;
    scu.association.release().await.unwrap();
    assert_eq!(got.status(), 0xA702, "{got:?}");
    assert_eq!(got.counts(), (Some(0), Some(2), Some(0)), "{got:?}");
    assert!(got.stored.is_empty(), "{got:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_c_store_goes_to_a_sop_class_without_the_scp_role() {
    let mut server = Server::start(|_| {}).await;
    let ct = pacs_fixtures::single(Kind::Ct, ts::EXPLICIT_VR_LE, 21);
    let mr = pacs_fixtures::single(Kind::Mr, ts::EXPLICIT_VR_LE, 22);
    let members = [&ct, &mr];
    store_all(&server, &members).await;
    let uncompressed = [ts::IMPLICIT_VR_LE, ts::EXPLICIT_VR_LE];

    // Storage contexts accepted, but no SCP/SCU role selection: the peer
    // is SCU only, nothing may be sent to it.
    let mut scu = get_scu(&server, &members, &uncompressed, &[]).await;
    let got = scu.retrieve(STUDY_ROOT_GET, None, &studies(&members)).await;
    scu.association.release().await.unwrap();
    assert_eq!(got.status(), 0xA702, "{got:?}");
    assert_eq!(got.counts(), (Some(0), Some(2), Some(0)), "{got:?}");
    assert!(got.stored.is_empty(), "{got:?}");

    // The SCP role for CT only: the CT instance comes, the MR one fails,
    // and the C-GET goes on past it.
    let mut scu = get_scu(&server, &members, &uncompressed, &[&ct]).await;
    let got = scu.retrieve(STUDY_ROOT_GET, None, &studies(&members)).await;
    scu.association.release().await.unwrap();
    assert_eq!(got.status(), 0xB000, "{got:?}");
    assert_eq!(got.counts(), (Some(1), Some(1), Some(0)), "{got:?}");
    assert_eq!(got.stored, [ct.sop_instance_uid.as_str()]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_implicit_le_contexts_only_gets_every_instance_converted() {
    if !common::dcmtk_tools(&["dcmdump"]) {
        return;
    }
    let mut server = Server::start(|_| {}).await;
    let files = conversion_fixtures();
    let members: Vec<&FixtureFile> = files.iter().collect();
    store_all(&server, &members).await;
    let mut scu = get_scu(&server, &members, &[IMPLICIT_VR_LE], &members).await;
    let got = scu.retrieve(STUDY_ROOT_GET, None, &studies(&members)).await;
    scu.association.release().await.unwrap();
    assert_eq!(got.status(), 0x0000, "{got:?}");
    assert_eq!(got.counts(), (Some(7), Some(0), Some(0)), "{got:?}");
    let work = tempfile::tempdir().unwrap();
    for f in &files {
        let at = got
            .stored
            .iter()
            .position(|u| *u == f.sop_instance_uid)
            .unwrap_or_else(|| panic!("{} not received", f.file_name));
        // What came on the wire, as a Part-10 file in Implicit VR LE.
        let object = dicom_object::InMemDicomObject::read_dataset_with_ts(
            got.stored_data_sets[at].as_slice(),
            &dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap_or_else(|e| panic!("{}: not Implicit VR LE: {e}", f.file_name))
        .with_meta(dicom_object::meta::FileMetaTableBuilder::new().transfer_syntax(IMPLICIT_VR_LE))
        .unwrap();
        let path = work.path().join("received.dcm");
        object.write_to_file(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_converted(f, &path, &bytes, work.path()).await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requestor_that_never_answers_a_c_store_gets_the_final_status_after_the_dimse_timeout() {
    let mut server = Server::start(|c| c.dimse_timeout_secs = 1).await;
    let ct = pacs_fixtures::single(Kind::Ct, ts::EXPLICIT_VR_LE, 51);
    let mr = pacs_fixtures::single(Kind::Mr, ts::EXPLICIT_VR_LE, 52);
    let members = [&ct, &mr];
    store_all(&server, &members).await;
    let mut scu = get_scu(&server, &members, &[ts::EXPLICIT_VR_LE], &members).await;
    let pc = scu.context_id(STUDY_ROOT_GET).unwrap();
    let mut rq = Command::new(field::C_GET_RQ);
    rq.set_text(tag::AFFECTED_SOP_CLASS_UID, STUDY_ROOT_GET)
        .set_us(tag::MESSAGE_ID, 99)
        .set_us(tag::PRIORITY, 0)
        .set_us(tag::COMMAND_DATA_SET_TYPE, 0);
    scu.send_pdv(pc, PDataValueType::Command, true, &rq.encode())
        .await;
    scu.send_data(pc, &studies(&members), true).await;
    let started = std::time::Instant::now();
    // Read everything, answer nothing.
    let mut stores: Vec<(u8, Command)> = Vec::new();
    let mut command_bytes = Vec::new();
    let last = 'read: loop {
        let Pdu::PData { data } = scu.receive().await.unwrap() else {
            panic!("expected P-DATA");
        };
        for pdv in data {
            if pdv.value_type != PDataValueType::Command {
                continue;
            }
            command_bytes.extend_from_slice(&pdv.data);
            if !pdv.is_last {
                continue;
            }
            let command = Command::decode(&std::mem::take(&mut command_bytes)).unwrap();
            match command.command_field() {
                Some(field::C_STORE_RQ) => stores.push((pdv.presentation_context_id, command)),
                Some(field::C_GET_RSP) if command.us(tag::STATUS) != Some(0xFF00) => {
                    break 'read command;
                }
                _ => {}
            }
        }
    };
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The second instance was not even sent.
    assert_eq!(stores.len(), 1);
    assert_eq!(last.us(tag::STATUS), Some(0xA702), "{last:?}");
    assert_eq!(last.us(tag::COMPLETED_SUB_OPERATIONS), Some(0));
    assert_eq!(last.us(tag::FAILED_SUB_OPERATIONS), Some(2));

    // A late answer is ignored and the association goes on serving.
    let (id, store) = &stores[0];
    let late = Command::response_to(store, field::C_STORE_RSP, 0);
    scu.send_pdv(*id, PDataValueType::Command, true, &late.encode())
        .await;
    let got = scu.retrieve(STUDY_ROOT_GET, None, &studies(&members)).await;
    scu.association.release().await.unwrap();
    assert_eq!(got.status(), 0x0000, "{got:?}");
    assert_eq!(got.counts(), (Some(2), Some(0), Some(0)), "{got:?}");
    server.shutdown().await;
}
