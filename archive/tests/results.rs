//! Lab results and reports through `Archive::ingest_message`: durable raw
//! message, results in the catalog, duplicates, corrections kept as history,
//! refusals that store nothing, and reports linked to their study.

use bytes::Bytes;
use pacs_archive::results::{
    Coding, MessageFormat, MessageReceipt, MessageRefusal, PatientResults, ResultMessage,
    ResultObservation, ResultPatient, ResultReport,
};
use pacs_archive::{Archive, ArchiveConfig, IngestSource};

fn hgb(value: f64, status: &str) -> ResultObservation {
    ResultObservation {
        code: Coding {
            code: Some("718-7".into()),
            display: Some("Hemoglobin".into()),
            system: Some("LN".into()),
        },
        value_type: Some("NM".into()),
        value: Some(value.to_string()),
        numeric_value: Some(value),
        units: Some("g/dL".into()),
        reference_range: Some("13.5-17.5".into()),
        abnormal_flags: if value < 13.5 {
            vec!["L".into()]
        } else {
            vec![]
        },
        status: Some(status.into()),
        observed_at: Some("20261101083000".into()),
        notes: vec![],
    }
}

fn message(
    control_id: &str,
    patient_id: &str,
    observations: Vec<ResultObservation>,
) -> ResultMessage {
    ResultMessage {
        format: MessageFormat::Hl7v2,
        message_type: "ORU^R01".into(),
        sender: "LAB|GENERAL".into(),
        control_id: control_id.into(),
        patients: vec![PatientResults {
            patient: ResultPatient {
                id: patient_id.into(),
                issuer: None,
                name: Some("Doe^Jane".into()),
                birth_date: Some("19700101".into()),
                sex: Some("F".into()),
            },
            reports: vec![ResultReport {
                filler_number: Some("F-1001".into()),
                service: Coding {
                    code: Some("58410-2".into()),
                    display: Some("CBC panel".into()),
                    system: Some("LN".into()),
                },
                status: Some("F".into()),
                observations,
                ..ResultReport::default()
            }],
        }],
    }
}

async fn open() -> (tempfile::TempDir, Archive) {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(ArchiveConfig::embedded(dir.path()))
        .await
        .unwrap();
    (dir, archive)
}

/// Objects (packs) of raw messages in the object store, once the outbox
/// is written out.
async fn objects(archive: &Archive, dir: &std::path::Path) -> usize {
    archive.flush_outbox().await.unwrap();
    walkdir(dir.join("objects/messages"))
}

fn walkdir(p: std::path::PathBuf) -> usize {
    match std::fs::read_dir(&p) {
        Ok(entries) => entries
            .flatten()
            .map(|e| {
                if e.path().is_dir() {
                    walkdir(e.path())
                } else {
                    1
                }
            })
            .sum(),
        Err(_) => 0,
    }
}

fn src() -> IngestSource {
    IngestSource::Other("test".into())
}

#[tokio::test]
async fn a_message_is_stored_once_and_corrections_keep_history() {
    let (dir, archive) = open().await;
    let raw = Bytes::from_static(b"MSH|^~\\&|LAB|GENERAL|...first");
    let first = archive
        .ingest_message(
            raw.clone(),
            message("MSG1", "P100", vec![hgb(12.9, "F")]),
            src(),
        )
        .await;
    let MessageReceipt::Stored {
        message_id,
        reports,
    } = first
    else {
        panic!("{first}");
    };
    assert_eq!(reports.len(), 1);
    assert_eq!(objects(&archive, dir.path()).await, 1);

    // Re-sent: acknowledged, nothing new.
    let again = archive
        .ingest_message(raw, message("MSG1", "P100", vec![hgb(12.9, "F")]), src())
        .await;
    assert_eq!(again, MessageReceipt::Duplicate { message_id });
    assert_eq!(objects(&archive, dir.path()).await, 1);
    // The same control id with other content is a conflict, not a copy.
    let reused = archive
        .ingest_message(
            Bytes::from_static(b"MSH|^~\\&|LAB|GENERAL|...other"),
            message("MSG1", "P100", vec![hgb(11.0, "F")]),
            src(),
        )
        .await;
    assert!(
        matches!(reused, MessageReceipt::Refused(MessageRefusal::Conflict(_))),
        "{reused}"
    );
    assert_eq!(objects(&archive, dir.path()).await, 1);

    // A correction of the same test in the same order.
    let corrected = archive
        .ingest_message(
            Bytes::from_static(b"MSH|^~\\&|LAB|GENERAL|...correction"),
            message("MSG2", "P100", vec![hgb(13.9, "C")]),
            src(),
        )
        .await;
    assert!(corrected.is_success(), "{corrected}");
    let history = archive
        .catalog()
        .patient_observations("P100", None, Some("718-7"))
        .await
        .unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0].observation.numeric_value, Some(12.9));
    assert_eq!(history[0].observation.abnormal_flags, ["L"]);
    assert_eq!(history[0].superseded_by, Some(history[1].id));
    assert_eq!(history[1].observation.status.as_deref(), Some("C"));
    assert_eq!(history[1].superseded_by, None);
    // Another patient's results are not theirs.
    assert!(
        archive
            .catalog()
            .patient_observations("P999", None, None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_message_without_patient_or_results_stores_nothing() {
    let (dir, archive) = open().await;
    let no_patient = archive
        .ingest_message(
            Bytes::from_static(b"x"),
            message("MSG1", " ", vec![hgb(14.0, "F")]),
            src(),
        )
        .await;
    assert!(matches!(
        no_patient,
        MessageReceipt::Refused(MessageRefusal::Invalid(_))
    ));
    let mut empty = message("MSG2", "P1", vec![]);
    empty.patients[0].reports.clear();
    let nothing = archive
        .ingest_message(Bytes::from_static(b"y"), empty, src())
        .await;
    assert!(matches!(
        nothing,
        MessageReceipt::Refused(MessageRefusal::Invalid(_))
    ));
    assert_eq!(objects(&archive, dir.path()).await, 0);
    assert_eq!(
        archive
            .catalog()
            .message_by_key("LAB|GENERAL", "MSG1")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_report_is_linked_to_its_study_by_accession_number() {
    let (_dir, archive) = open().await;
    let ct = pacs_fixtures::single(
        pacs_fixtures::Kind::Ct,
        pacs_fixtures::ts::EXPLICIT_VR_LE,
        7,
    );
    let receipt = archive
        .ingest_part10(Bytes::from(ct.bytes.clone()), src())
        .await;
    assert!(receipt.is_success());
    let object = dicom_object::from_reader(&ct.bytes[128..]).unwrap();
    let accession = object
        .element(dicom_dictionary_std::tags::ACCESSION_NUMBER)
        .unwrap()
        .to_str()
        .unwrap()
        .trim()
        .to_owned();
    let mut m = message("RAD1", &ct.patient_id, vec![]);
    m.patients[0].reports[0].accession_number = Some(accession);
    m.patients[0].reports[0].report_text = Some("FINDINGS: No acute abnormality.".into());
    let r = archive
        .ingest_message(Bytes::from_static(b"MSH|report"), m, src())
        .await;
    assert!(r.is_success(), "{r}");
    let reports = archive
        .catalog()
        .study_reports(&ct.study_instance_uid)
        .await
        .unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(
        reports[0].report.report_text.as_deref(),
        Some("FINDINGS: No acute abnormality.")
    );
    assert_eq!(
        reports[0].patient_id.as_deref(),
        Some(ct.patient_id.as_str())
    );
}

#[tokio::test]
async fn a_report_that_comes_first_is_linked_when_the_images_come() {
    let (_dir, archive) = open().await;
    let ct = pacs_fixtures::single(
        pacs_fixtures::Kind::Ct,
        pacs_fixtures::ts::EXPLICIT_VR_LE,
        9,
    );
    let object = dicom_object::from_reader(&ct.bytes[128..]).unwrap();
    let accession = object
        .element(dicom_dictionary_std::tags::ACCESSION_NUMBER)
        .unwrap()
        .to_str()
        .unwrap()
        .trim()
        .to_owned();
    let mut m = message("RAD2", &ct.patient_id, vec![]);
    m.patients[0].reports[0].accession_number = Some(accession);
    m.patients[0].reports[0].report_text = Some("IMPRESSION: Normal.".into());
    assert!(
        archive
            .ingest_message(Bytes::from_static(b"MSH|early"), m, src())
            .await
            .is_success()
    );
    assert!(
        archive
            .catalog()
            .study_reports(&ct.study_instance_uid)
            .await
            .unwrap()
            .is_empty()
    );
    let receipt = archive
        .ingest_part10(Bytes::from(ct.bytes.clone()), src())
        .await;
    assert!(receipt.is_success());
    let reports = archive
        .catalog()
        .study_reports(&ct.study_instance_uid)
        .await
        .unwrap();
    assert_eq!(reports.len(), 1, "the early report is linked to the study");
}

#[tokio::test]
async fn verify_rehashes_message_blobs_and_names_a_damaged_one() {
    let (dir, archive) = open().await;
    let raw = Bytes::from_static(b"MSH|^~\\&|LAB|GENERAL|||20261101||ORU^R01|MSG9|P|2.5.1");
    let receipt = archive
        .ingest_message(
            raw.clone(),
            message("MSG9", "P7", vec![hgb(14.1, "F")]),
            src(),
        )
        .await;
    let MessageReceipt::Stored { message_id, .. } = receipt else {
        panic!("{receipt}");
    };
    assert_eq!(archive.retrieve_message(message_id).await.unwrap(), raw);
    let report = archive.verify(|_| {}).await.unwrap();
    assert_eq!(report.messages_checked, 1);
    assert!(report.damaged.is_empty());
    // Once in the object store (out of the outbox), the same.
    assert_eq!(objects(&archive, dir.path()).await, 1);
    assert!(archive.catalog().outbox_batch(10).await.unwrap().is_empty());
    assert_eq!(archive.retrieve_message(message_id).await.unwrap(), raw);
    // Damage the stored blob: verify and retrieval both say so.
    let path = first_file(dir.path().join("objects/messages"));
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&path, bytes).unwrap();
    let report = archive.verify(|_| {}).await.unwrap();
    assert_eq!(report.damaged.len(), 1);
    assert_eq!(report.damaged[0].0, format!("message {message_id}"));
    assert!(archive.retrieve_message(message_id).await.is_err());
}

fn first_file(p: std::path::PathBuf) -> std::path::PathBuf {
    let entry = std::fs::read_dir(&p)
        .unwrap()
        .flatten()
        .next()
        .unwrap_or_else(|| panic!("nothing under {}", p.display()));
    if entry.path().is_dir() {
        first_file(entry.path())
    } else {
        entry.path()
    }
}

#[tokio::test]
async fn an_acknowledged_message_is_readable_before_and_after_the_move() {
    let (dir, archive) = open().await;
    let raws: Vec<Bytes> = (0..40)
        .map(|i| {
            Bytes::from(format!(
                "MSH|^~\\&|LAB|GENERAL|||20261101||ORU^R01|OUT{i}|P|2.5.1"
            ))
        })
        .collect();
    let mut ids = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        let receipt = archive
            .ingest_message(
                raw.clone(),
                message(&format!("OUT{i}"), &format!("P{i}"), vec![hgb(14.0, "F")]),
                src(),
            )
            .await;
        let MessageReceipt::Stored { message_id, .. } = receipt else {
            panic!("{receipt}");
        };
        // Readable as soon as acknowledged, wherever its bytes are.
        assert_eq!(&archive.retrieve_message(message_id).await.unwrap(), raw);
        ids.push(message_id);
    }
    // The mover empties the outbox by itself.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !archive.catalog().outbox_batch(1).await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the outbox was not emptied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // In packs: fewer objects than messages once several waited together.
    let packs = walkdir(dir.path().join("objects/messages"));
    assert!((1..=raws.len()).contains(&packs), "{packs} packs");
    for (id, raw) in ids.iter().zip(&raws) {
        assert_eq!(&archive.retrieve_message(*id).await.unwrap(), raw);
    }
    // Reopened: nothing waits, everything verifies.
    drop(archive);
    let archive = Archive::open(ArchiveConfig::embedded(dir.path()))
        .await
        .unwrap();
    let report = archive.verify(|_| {}).await.unwrap();
    assert_eq!(report.messages_checked, raws.len() as u64);
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_sent_at_once_is_recorded_once_and_its_group_mates_are_unharmed() {
    let (dir, archive) = open().await;
    let raw = Bytes::from_static(b"MSH|^~\\&|LAB|GENERAL|...burst");
    // Eight copies of one message and four other messages at once: they
    // share group commits, where a copy fails the catalog's unique key.
    let copies = (0..8).map(|_| {
        archive.ingest_message(
            raw.clone(),
            message("BURST", "P300", vec![hgb(13.1, "F")]),
            src(),
        )
    });
    let others = (0..4).map(|i| {
        archive.ingest_message(
            Bytes::from(format!("MSH|^~\\&|LAB|GENERAL|...other {i}")),
            message(
                &format!("OTHER{i}"),
                "P301",
                vec![hgb(14.0 + i as f64, "F")],
            ),
            src(),
        )
    });
    let (copies, others) = tokio::join!(
        futures::future::join_all(copies),
        futures::future::join_all(others)
    );
    let stored: Vec<i64> = copies
        .iter()
        .filter_map(|r| match r {
            MessageReceipt::Stored { message_id, .. } => Some(*message_id),
            _ => None,
        })
        .collect();
    assert_eq!(stored.len(), 1, "{copies:?}");
    for receipt in &copies {
        assert!(
            matches!(receipt, MessageReceipt::Stored { .. })
                || *receipt
                    == MessageReceipt::Duplicate {
                        message_id: stored[0]
                    },
            "{receipt}"
        );
    }
    assert!(
        others
            .iter()
            .all(|r| matches!(r, MessageReceipt::Stored { .. })),
        "{others:?}"
    );
    let catalog = archive.catalog();
    assert_eq!(
        catalog
            .patient_observations("P300", None, None)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        catalog
            .patient_observations("P301", None, None)
            .await
            .unwrap()
            .len(),
        4
    );
    // The raw bytes of each distinct message, once: five messages.
    let _ = objects(&archive, dir.path()).await;
    assert_eq!(archive.catalog().message_blobs().await.unwrap().len(), 5);
    assert_eq!(
        catalog
            .message_by_key("LAB|GENERAL", "BURST")
            .await
            .unwrap()
            .map(|(id, _)| id),
        Some(stored[0])
    );
}

/// A catalog written by an earlier version kept waiting messages in an
/// outbox keyed by SHA-256; migration 0007 keys it by message id and
/// rebuilds the change feed. A message acknowledged then must still read
/// back, be written out by the mover and verify; the feed must go on from
/// its last seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_waiting_in_an_older_outbox_survive_the_migration() {
    use sqlx::Connection as _;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

    let dir = tempfile::tempdir().unwrap();
    let config = ArchiveConfig::embedded(dir.path());
    let options: SqliteConnectOptions = config.catalog_url().parse().unwrap();
    let mut conn = SqliteConnection::connect_with(&options.create_if_missing(true))
        .await
        .unwrap();
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    let mut migrator = sqlx::migrate::Migrator::new(folder).await.unwrap();
    migrator.migrations = migrator
        .migrations
        .iter()
        .filter(|m| m.version <= 6)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    migrator.run(&mut conn).await.unwrap();
    let raws: Vec<Bytes> = (0..3)
        .map(|i| {
            Bytes::from(format!(
                "MSH|^~\\&|LAB|GENERAL|||20261101||ORU^R01|OLD{i}|P|2.5.1"
            ))
        })
        .collect();
    let mut ids = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        let sha = pacs_archive::retrieve::sha256_hex(raw);
        let key = pacs_archive::results::message_key(&sha);
        let data = zstd::encode_all(raw.as_ref(), 3).unwrap();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO messages (format, message_type, sender, control_id, sha256, blob_key, \
             original_size, stored_size, received_at, source) \
             VALUES ('hl7v2', 'ORU^R01', 'LAB|GENERAL', $1, $2, $3, $4, $5, '2026-11-01T08:00:00Z', 'test') \
             RETURNING id",
        )
        .bind(format!("OLD{i}"))
        .bind(&sha)
        .bind(&key)
        .bind(raw.len() as i64)
        .bind(data.len() as i64)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO message_outbox (sha256, blob_key, data, created_at) \
             VALUES ($1, $2, $3, '2026-11-01T08:00:00Z')",
        )
        .bind(&sha)
        .bind(&key)
        .bind(&data)
        .execute(&mut conn)
        .await
        .unwrap();
        ids.push(id);
    }
    // The change feed had reached seq 41 (older entries are not needed).
    sqlx::query(
        "INSERT INTO changes (seq, kind, report_id, recorded_at) \
         VALUES (41, 'report-stored', 1, '2026-11-01T08:00:00Z')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    let archive = Archive::open(config).await.unwrap();
    // The feed keeps its entries and goes on from where it was.
    let receipt = archive
        .ingest_message(
            Bytes::from_static(b"MSH|^~\\&|LAB|GENERAL|||20261101||ORU^R01|NEW1|P|2.5.1"),
            message("NEW1", "P1", vec![hgb(14.1, "F")]),
            src(),
        )
        .await;
    assert!(
        matches!(receipt, MessageReceipt::Stored { .. }),
        "{receipt}"
    );
    let seqs: Vec<i64> = archive
        .catalog()
        .changes_since(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(seqs, [41, 42]);
    for (id, raw) in ids.iter().zip(&raws) {
        assert_eq!(&archive.retrieve_message(*id).await.unwrap(), raw);
    }
    // (The archive's own mover may have written some out already.)
    archive.flush_outbox().await.unwrap();
    assert!(archive.catalog().outbox_batch(10).await.unwrap().is_empty());
    for (id, raw) in ids.iter().zip(&raws) {
        assert_eq!(&archive.retrieve_message(*id).await.unwrap(), raw);
    }
    let report = archive.verify(|_| {}).await.unwrap();
    assert_eq!(report.messages_checked, raws.len() as u64 + 1);
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
}
