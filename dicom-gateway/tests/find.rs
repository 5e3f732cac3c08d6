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
    server.indexed().await;
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

const MODALITY: Tag = Tag(0x0008, 0x0060);
const MODALITIES_IN_STUDY: Tag = Tag(0x0008, 0x0061);
const STUDIES_OF_PATIENT: Tag = Tag(0x0020, 0x1200);
const SERIES_OF_PATIENT: Tag = Tag(0x0020, 0x1202);
const INSTANCES_OF_PATIENT: Tag = Tag(0x0020, 0x1204);
const SERIES_OF_STUDY: Tag = Tag(0x0020, 0x1206);
const INSTANCES_OF_STUDY: Tag = Tag(0x0020, 0x1208);
const INSTANCES_OF_SERIES: Tag = Tag(0x0020, 0x1209);

/// What the fixtures hold about one study.
#[derive(Default)]
struct StudyFacts {
    patient_id: String,
    patient_name: String,
    series: BTreeSet<String>,
    instances: usize,
    modalities: BTreeSet<String>,
}

/// Run findscu with raw `-k` arguments (not necessarily UTF-8: values in
/// ISO_IR 100 go on the command line as Latin-1 bytes).
async fn find_raw(
    server: &Server,
    model: &str,
    keys: &[std::ffi::OsString],
) -> Vec<dicom_object::DefaultDicomObject> {
    let out = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new("/usr/bin/findscu");
    command
        .args(["-aet", CALLING, "-aec", "PACS", model, "-X", "-od"])
        .arg(out.path());
    for k in keys {
        command.arg("-k").arg(k);
    }
    let output = tokio::time::timeout(
        common::TIMEOUT,
        command
            .arg("127.0.0.1")
            .arg(server.port())
            .env("TCP_NODELAY", "1")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("findscu timed out")
    .expect("cannot run findscu");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
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

fn study_uids(found: &[dicom_object::DefaultDicomObject]) -> BTreeSet<String> {
    found.iter().map(|o| text(o, STUDY_UID)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findscu_gets_computed_keys_modalities_and_unicode_names() {
    if !common::dcmtk_tools(&["findscu"]) {
        return;
    }
    let mut server = Server::start(|_| {}).await;
    let files: Vec<FixtureFile> = DatasetSpec::small().iter().collect();
    store_all(&server, &files).await;
    let mut studies: BTreeMap<String, StudyFacts> = BTreeMap::new();
    let mut instances_of: BTreeMap<String, usize> = BTreeMap::new();
    for f in &files {
        let object = dicom_object::from_reader(&f.bytes[128..]).unwrap();
        let study = studies.entry(f.study_instance_uid.clone()).or_default();
        study.patient_id = f.patient_id.clone();
        study.patient_name = text(&object, PATIENT_NAME);
        study.series.insert(f.series_instance_uid.clone());
        study.instances += 1;
        study.modalities.insert(text(&object, MODALITY));
        *instances_of
            .entry(f.series_instance_uid.clone())
            .or_default() += 1;
    }
    assert!(
        studies.values().any(|s| s.modalities.len() > 1),
        "the fixtures should have a study with several modalities"
    );

    // Computed study keys and ModalitiesInStudy, for every study.
    let found = find(
        &server,
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID",
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
            "ModalitiesInStudy",
        ],
    )
    .await;
    assert_eq!(study_uids(&found), studies.keys().cloned().collect());
    for o in &found {
        let study = &studies[&text(o, STUDY_UID)];
        assert_eq!(text(o, SERIES_OF_STUDY), study.series.len().to_string());
        assert_eq!(text(o, INSTANCES_OF_STUDY), study.instances.to_string());
        let modalities: BTreeSet<String> = text(o, MODALITIES_IN_STUDY)
            .split('\\')
            .map(str::to_owned)
            .collect();
        assert_eq!(modalities, study.modalities);
    }

    // Matching on ModalitiesInStudy: one value, and a list of values.
    let with = |wanted: &[&str]| -> BTreeSet<String> {
        studies
            .iter()
            .filter(|(_, s)| wanted.iter().any(|m| s.modalities.contains(*m)))
            .map(|(u, _)| u.clone())
            .collect()
    };
    let ct = with(&["CT"]);
    assert!(!ct.is_empty() && ct.len() < studies.len());
    let found = find(
        &server,
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID",
            "ModalitiesInStudy=CT",
        ],
    )
    .await;
    assert_eq!(study_uids(&found), ct);
    for o in &found {
        // All the study's modalities come back, not only the matched one.
        let study = &studies[&text(o, STUDY_UID)];
        assert_eq!(
            text(o, MODALITIES_IN_STUDY),
            study
                .modalities
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join("\\")
        );
    }
    let found = find(
        &server,
        "-S",
        &["QueryRetrieveLevel=STUDY", "ModalitiesInStudy=CT\\MR"],
    )
    .await;
    let ct_mr = with(&["CT", "MR"]);
    assert!(ct_mr.len() > ct.len());
    assert_eq!(study_uids(&found), ct_mr);

    // Computed series keys.
    let (study_uid, study) = studies
        .iter()
        .find(|(_, s)| s.series.len() > 1)
        .expect("a study with several series");
    let found = find(
        &server,
        "-S",
        &[
            "QueryRetrieveLevel=SERIES",
            &format!("StudyInstanceUID={study_uid}"),
            "SeriesInstanceUID",
            "NumberOfSeriesRelatedInstances",
        ],
    )
    .await;
    assert_eq!(found.len(), study.series.len());
    for o in &found {
        let series = text(o, SERIES_UID);
        assert_eq!(text(o, STUDY_UID), *study_uid);
        assert_eq!(
            text(o, INSTANCES_OF_SERIES),
            instances_of[&series].to_string()
        );
    }

    // Computed patient keys (Patient Root).
    let found = find(
        &server,
        "-P",
        &[
            "QueryRetrieveLevel=PATIENT",
            "PatientID",
            "PatientName",
            "NumberOfPatientRelatedStudies",
            "NumberOfPatientRelatedSeries",
            "NumberOfPatientRelatedInstances",
        ],
    )
    .await;
    assert_eq!(found.len(), studies.len());
    for o in &found {
        let mine: Vec<&StudyFacts> = studies
            .values()
            .filter(|s| {
                s.patient_id == text(o, PATIENT_ID) && s.patient_name == text(o, PATIENT_NAME)
            })
            .collect();
        assert!(!mine.is_empty(), "{}", text(o, PATIENT_NAME));
        assert_eq!(text(o, STUDIES_OF_PATIENT), mine.len().to_string());
        let series: usize = mine.iter().map(|s| s.series.len()).sum();
        assert_eq!(text(o, SERIES_OF_PATIENT), series.to_string());
        let instances: usize = mine.iter().map(|s| s.instances).sum();
        assert_eq!(text(o, INSTANCES_OF_PATIENT), instances.to_string());
    }

    // Person names beyond ASCII: case- and accent-insensitive, in the
    // character set the query declares.
    let named = |prefix: &str| -> BTreeSet<String> {
        studies
            .iter()
            .filter(|(_, s)| s.patient_name.to_lowercase().starts_with(prefix))
            .map(|(u, _)| u.clone())
            .collect()
    };
    let muller = named("müller");
    assert_eq!(muller.len(), 1, "the fixtures' Müller^Jürgen");
    let utf8 = |keys: &[&str]| -> Vec<std::ffi::OsString> {
        keys.iter().map(std::ffi::OsString::from).collect()
    };
    for keys in [
        ["SpecificCharacterSet=ISO_IR 192", "PatientName=müller*"],
        [
            "SpecificCharacterSet=ISO_IR 192",
            "PatientName=MÜLLER^JÜRGEN",
        ],
        ["SpecificCharacterSet=ISO_IR 192", "PatientName=m?ller^j*"],
        // Without diacritics, in plain ASCII.
        ["PatientName=MULLER^JURGEN", "PatientID"],
    ] {
        let mut keys = utf8(&keys);
        keys.push("QueryRetrieveLevel=STUDY".into());
        keys.push("StudyInstanceUID".into());
        let found = find_raw(&server, "-S", &keys).await;
        assert_eq!(study_uids(&found), muller, "{keys:?}");
        assert_eq!(text(&found[0], PATIENT_NAME), "Müller^Jürgen");
    }
    let greek = named("παπαδοπούλου");
    assert_eq!(greek.len(), 1, "the fixtures' Greek patient");
    let found = find_raw(
        &server,
        "-S",
        &utf8(&[
            "SpecificCharacterSet=ISO_IR 192",
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID",
            "PatientName=ΠΑΠΑΔΟΠΟΥΛΟΥ^*",
        ]),
    )
    .await;
    assert_eq!(study_uids(&found), greek);
    assert_eq!(text(&found[0], PATIENT_NAME), "Παπαδοπούλου^Ελένη");
    // A Latin-1 (ISO_IR 100) query value: "øVERGÅRD*" as ISO 8859-1 bytes.
    let overgard = named("øvergård");
    assert_eq!(overgard.len(), 1, "the fixtures' Øvergård^Åse");
    let latin1 = {
        use std::os::unix::ffi::OsStringExt;
        let mut value = b"PatientName=".to_vec();
        value.extend_from_slice(b"\xf8VERG\xc5RD*");
        std::ffi::OsString::from_vec(value)
    };
    let mut keys = utf8(&[
        "SpecificCharacterSet=ISO_IR 100",
        "QueryRetrieveLevel=STUDY",
        "StudyInstanceUID",
    ]);
    keys.push(latin1);
    let found = find_raw(&server, "-S", &keys).await;
    assert_eq!(study_uids(&found), overgard);
    // The ASCII-only folding of SQLite's lower() would find nothing here.
    let found = find_raw(
        &server,
        "-S",
        &utf8(&[
            "SpecificCharacterSet=ISO_IR 192",
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID",
            "PatientName=øVERGÅRD^åse",
        ]),
    )
    .await;
    assert_eq!(study_uids(&found), overgard);
    server.shutdown().await;
}
