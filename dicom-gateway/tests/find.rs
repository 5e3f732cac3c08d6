//! C-FIND driven by DCMTK's findscu over data stored through the gateway.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{CALLING, Server, TestScu, dcmtk_tool, split_part10};
use dicom_core::Tag;
use pacs_dicom_gateway::dimse::tag;
use pacs_fixtures::{DatasetSpec, FixtureFile};

async fn store_all(server: &Server, files: &[FixtureFile]) {
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

fn text(object: &dicom_object::DefaultDicomObject, t: Tag) -> String {
    object
        .element_opt(t)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|v| v.trim_end_matches(['\0', ' ']).to_owned())
        .unwrap_or_default()
}

/// Run findscu with `keys`; returns the response identifiers.
async fn find(
    server: &Server,
    model: &str,
    keys: &[&str],
) -> Vec<dicom_object::DefaultDicomObject> {
    let out = tempfile::tempdir().unwrap();
    let port = server.port();
    let mut args = vec![
        "-aet",
        CALLING,
        "-aec",
        "PACS",
        model,
        "-X",
        "-od",
        out.path().to_str().unwrap(),
    ];
    for k in keys {
        args.push("-k");
        args.push(k);
    }
    args.push("127.0.0.1");
    args.push(&port);
    let (ok, log) = dcmtk_tool("findscu", &args).await;
    assert!(ok, "{log}");
    let mut files: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| dicom_object::open_file(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

const STUDY_UID: Tag = Tag(0x0020, 0x000D);
const SERIES_UID: Tag = Tag(0x0020, 0x000E);
const PATIENT_NAME: Tag = Tag(0x0010, 0x0010);
const PATIENT_ID: Tag = Tag(0x0010, 0x0020);
const STUDY_DATE: Tag = Tag(0x0008, 0x0020);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findscu_queries_every_level_with_the_matching_rules() {
    if !common::dcmtk_tools(&["findscu"]) {
        return;
    }
    let mut server = Server::start(|_| {}).await;
    let files: Vec<FixtureFile> = DatasetSpec::small().iter().collect();
    store_all(&server, &files).await;
    // What the fixtures hold, read back with dicom-object.
    let mut studies: BTreeMap<String, (String, String, String)> = BTreeMap::new(); // uid -> (patient id, name, date)
    let mut series_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut instances_of: BTreeMap<String, usize> = BTreeMap::new();
    for f in &files {
        let object = dicom_object::from_reader(&f.bytes[128..]).unwrap();
        studies.insert(
            f.study_instance_uid.clone(),
            (
                f.patient_id.clone(),
                text(&object, PATIENT_NAME),
                text(&object, STUDY_DATE),
            ),
        );
        series_of
            .entry(f.study_instance_uid.clone())
            .or_default()
            .insert(f.series_instance_uid.clone());
        *instances_of
            .entry(f.series_instance_uid.clone())
            .or_default() += 1;
    }
    let patients: BTreeSet<&String> = studies.values().map(|(id, _, _)| id).collect();

    // Universal matching at STUDY level, Study Root.
    let all = find(
        &server,
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID",
            "PatientName",
            "StudyDate",
        ],
    )
    .await;
    let got: BTreeSet<String> = all.iter().map(|o| text(o, STUDY_UID)).collect();
    assert_eq!(got, studies.keys().cloned().collect::<BTreeSet<_>>());
    for o in &all {
        let (_, name, date) = &studies[&text(o, STUDY_UID)];
        assert_eq!(&text(o, PATIENT_NAME), name);
        assert_eq!(&text(o, STUDY_DATE), date);
    }

    // PATIENT level, Patient Root.
    let found = find(
        &server,
        "-P",
        &["QueryRetrieveLevel=PATIENT", "PatientID", "PatientName"],
    )
    .await;
    assert_eq!(found.len(), patients.len());

    // Person names match case-insensitively, with wildcards.
    let (uid, (_, name, _)) = studies
        .iter()
        .find(|(_, (_, n, _))| n.len() >= 3 && n.is_ascii())
        .expect("an ASCII patient name");
    let pattern = format!("PatientName={}*", name[..3].to_lowercase());
    let found = find(
        &server,
        "-S",
        &["QueryRetrieveLevel=STUDY", "StudyInstanceUID", &pattern],
    )
    .await;
    let expected: BTreeSet<&String> = studies
        .iter()
        .filter(|(_, (_, n, _))| n.to_lowercase().starts_with(&name[..3].to_lowercase()))
        .map(|(u, _)| u)
        .collect();
    assert!(expected.contains(uid));
    assert_eq!(found.len(), expected.len(), "{pattern}");

    // A UID list.
    let two: Vec<&String> = studies.keys().take(2).collect();
    let list = format!("StudyInstanceUID={}\\{}", two[0], two[1]);
    let found = find(&server, "-S", &["QueryRetrieveLevel=STUDY", &list]).await;
    assert_eq!(found.len(), 2);

    // A date range.
    let date = &studies[two[0]].2;
    let range = format!("StudyDate={date}-{date}");
    let found = find(
        &server,
        "-S",
        &["QueryRetrieveLevel=STUDY", "StudyInstanceUID", &range],
    )
    .await;
    let expected = studies.values().filter(|(_, _, d)| d == date).count();
    assert_eq!(found.len(), expected);
    let open_range = format!("StudyDate=-{date}");
    let found = find(&server, "-S", &["QueryRetrieveLevel=STUDY", &open_range]).await;
    let expected = studies.values().filter(|(_, _, d)| d <= date).count();
    assert_eq!(found.len(), expected);

    // SERIES within a study, IMAGE within a series.
    let study = two[0];
    let found = find(
        &server,
        "-S",
        &[
            "QueryRetrieveLevel=SERIES",
            &format!("StudyInstanceUID={study}"),
            "SeriesInstanceUID",
            "Modality",
        ],
    )
    .await;
    let got: BTreeSet<String> = found.iter().map(|o| text(o, SERIES_UID)).collect();
    assert_eq!(&got, &series_of[study]);
    let series = got.iter().next().unwrap();
    let found = find(
        &server,
        "-S",
        &[
            "QueryRetrieveLevel=IMAGE",
            &format!("StudyInstanceUID={study}"),
            &format!("SeriesInstanceUID={series}"),
            "SOPInstanceUID",
        ],
    )
    .await;
    assert_eq!(found.len(), instances_of[series]);
    // A patient's studies by Patient ID (single value matching).
    let pid = &studies[study].0;
    let found = find(
        &server,
        "-P",
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("PatientID={pid}"),
            "StudyInstanceUID",
        ],
    )
    .await;
    assert_eq!(
        found.len(),
        studies.values().filter(|(p, _, _)| p == pid).count()
    );
    assert!(
        found
            .iter()
            .all(|o| text(o, PATIENT_ID) == *pid || text(o, PATIENT_ID).is_empty())
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_match_cap_and_cancel_end_a_query() {
    if !common::dcmtk_tools(&["findscu"]) {
        return;
    }
    let mut server = Server::start(|c| c.max_find_matches = 2).await;
    let files: Vec<FixtureFile> = DatasetSpec::small().iter().collect();
    store_all(&server, &files).await;
    let found = find(
        &server,
        "-S",
        &["QueryRetrieveLevel=IMAGE", "SOPInstanceUID"],
    )
    .await;
    assert_eq!(found.len(), 2);
    server.shutdown().await;
}
