//! Ingest then retrieve returns byte-identical files for every transfer
//! syntax the fixtures make, on both backends; dedup and conflicts.

mod common;

use bytes::Bytes;
use pacs_archive::{Archive, IngestReceipt, IngestSource, RefusalReason};
use pacs_fixtures::{DatasetSpec, Kind, ts};

use common::*;

fn source() -> IngestSource {
    IngestSource::Other("test".into())
}

async fn roundtrip_every_fixture(archive: &Archive) {
    let spec = DatasetSpec::small();
    let files: Vec<_> = spec.iter().collect();
    let mut seen_ts = std::collections::BTreeSet::new();
    for file in &files {
        let receipt = archive
            .ingest_part10(Bytes::from(file.bytes.clone()), source())
            .await;
        let IngestReceipt::Stored(stored) = &receipt else {
            panic!(
                "{} ({}) not stored: {receipt:?}",
                file.file_name, file.transfer_syntax
            );
        };
        assert_eq!(stored.sop_instance_uid, file.sop_instance_uid);
        assert_eq!(stored.transfer_syntax_uid, file.transfer_syntax);
        assert!(stored.stored_size > 0);
        seen_ts.insert(file.transfer_syntax);
    }
    for expected in ts::ALL {
        assert!(seen_ts.contains(expected), "fixtures made no {expected}");
    }
    for file in &files {
        let back = archive.retrieve(&file.sop_instance_uid).await.unwrap();
        assert!(
            back[..] == file.bytes[..],
            "{} differs after retrieval",
            file.file_name
        );
    }
    let stats = archive.stats().await.unwrap();
    assert_eq!(stats.instances as usize, files.len());
    assert_eq!(
        stats.original_bytes as usize,
        files.iter().map(|f| f.bytes.len()).sum::<usize>()
    );
    assert!(stats.stored_bytes < stats.original_bytes);
    // Every ingest appended to the change feed, in order; so did the report
    // of each SR and PDF.
    let changes = archive.catalog().changes_since(0, 10_000).await.unwrap();
    let instances = changes.iter().filter(|c| c.kind == "instance-stored");
    assert_eq!(instances.count(), files.len());
    let documents = files
        .iter()
        .filter(|f| matches!(f.kind, pacs_fixtures::Kind::Sr | pacs_fixtures::Kind::Pdf))
        .count();
    assert!(documents > 0);
    let reports: Vec<_> = changes
        .iter()
        .filter(|c| c.kind == "report-stored")
        .collect();
    assert_eq!(reports.len(), documents);
    assert!(
        reports
            .iter()
            .all(|c| c.report_id.is_some() && c.study_instance_uid.is_some())
    );
    assert_eq!(changes.len(), files.len() + documents);
    assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[tokio::test]
async fn filesystem_backend_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let archive = fs_archive(dir.path()).await;
    roundtrip_every_fixture(&archive).await;

    // Native 16-bit images are stored as byte planes; everything else (8-bit
    // RGB, encapsulated, deflated, reports) as plain zstd that `zstd -d`
    // restores.
    let mut planar = 0;
    for file in DatasetSpec::small().iter() {
        let sha = pacs_archive::retrieve::sha256_hex(&file.bytes);
        let blob = std::fs::read(
            dir.path()
                .join("objects")
                .join(pacs_archive::store::blob_key(&sha)),
        )
        .unwrap();
        let native = [ts::IMPLICIT_VR_LE, ts::EXPLICIT_VR_LE, ts::EXPLICIT_VR_BE]
            .contains(&file.transfer_syntax);
        let sixteen_bit = matches!(file.kind, Kind::Ct | Kind::Mr | Kind::Cr);
        if native && sixteen_bit {
            assert!(
                pacs_archive::blob::is_planar(&blob),
                "{} not planar",
                file.file_name
            );
            planar += 1;
        } else {
            assert!(
                !pacs_archive::blob::is_planar(&blob),
                "{} planar",
                file.file_name
            );
            assert_eq!(
                zstd::bulk::decompress(&blob, file.bytes.len()).unwrap(),
                file.bytes,
                "{}",
                file.file_name
            );
        }
    }
    assert!(planar > 0);
}

#[tokio::test]
async fn s3_backend_roundtrip() {
    let Some(server) = s3_server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(s3_archive_config(dir.path(), &server))
        .await
        .unwrap();
    roundtrip_every_fixture(&archive).await;
    assert!(server.object_count() > 0);
}

#[tokio::test]
async fn identical_object_is_stored_once_and_conflict_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let archive = fs_archive(dir.path()).await;
    let original = pacs_fixtures::single(Kind::Mr, ts::EXPLICIT_VR_LE, 7);
    let first = archive
        .ingest_part10(Bytes::from(original.bytes.clone()), source())
        .await;
    assert!(matches!(first, IngestReceipt::Stored(_)), "{first:?}");
    let again = archive
        .ingest_part10(Bytes::from(original.bytes.clone()), source())
        .await;
    assert!(matches!(again, IngestReceipt::Duplicate(_)), "{again:?}");
    assert_eq!(fs_blob_count(dir.path()), 1);
    assert_eq!(
        archive.catalog().changes_since(0, 100).await.unwrap().len(),
        1
    );

    // Same SOP Instance UID, different content.
    let conflicting = edited(&original.bytes, |obj| {
        obj.put(dicom_core::DataElement::new(
            dicom_dictionary_std::tags::SERIES_DESCRIPTION,
            dicom_core::VR::LO,
            dicom_core::PrimitiveValue::from("CHANGED"),
        ));
    });
    let receipt = archive
        .ingest_part10(Bytes::from(conflicting), source())
        .await;
    match receipt {
        IngestReceipt::Refused(r) => {
            assert!(matches!(r.reason, RefusalReason::Conflict { .. }), "{r:?}");
            assert_eq!(
                r.sop_instance_uid.as_deref(),
                Some(original.sop_instance_uid.as_str())
            );
            assert!(r.reason.to_string().contains(&original.sop_instance_uid));
        }
        other => panic!("conflict not refused: {other:?}"),
    }
    assert_eq!(fs_blob_count(dir.path()), 1);
    let back = archive.retrieve(&original.sop_instance_uid).await.unwrap();
    assert!(back[..] == original.bytes[..]);
}

#[tokio::test]
async fn replacement_only_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = pacs_archive::ArchiveConfig::embedded(dir.path());
    config.ingest.allow_replace = true;
    let archive = Archive::open(config).await.unwrap();
    let original = pacs_fixtures::single(Kind::Ct, ts::IMPLICIT_VR_LE, 3);
    let replacement = edited(&original.bytes, |obj| {
        obj.put(dicom_core::DataElement::new(
            dicom_dictionary_std::tags::SERIES_DESCRIPTION,
            dicom_core::VR::LO,
            dicom_core::PrimitiveValue::from("CORRECTED"),
        ));
    });
    assert!(matches!(
        archive
            .ingest_part10(Bytes::from(original.bytes.clone()), source())
            .await,
        IngestReceipt::Stored(_)
    ));
    let receipt = archive
        .ingest_part10(Bytes::from(replacement.clone()), source())
        .await;
    assert!(matches!(receipt, IngestReceipt::Replaced(_)), "{receipt:?}");
    let back = archive.retrieve(&original.sop_instance_uid).await.unwrap();
    assert!(back[..] == replacement[..]);
    let kinds: Vec<String> = archive
        .catalog()
        .changes_since(0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.kind)
        .collect();
    assert_eq!(kinds, ["instance-stored", "instance-replaced"]);
}

#[tokio::test]
async fn dataset_plus_transfer_syntax_is_stored_as_part10() {
    // What C-STORE hands over: the data set bytes and the negotiated syntax.
    let dir = tempfile::tempdir().unwrap();
    let archive = fs_archive(dir.path()).await;
    let file = pacs_fixtures::single(Kind::Ct, ts::EXPLICIT_VR_LE, 11);
    let parsed = dicom_object::OpenFileOptions::new()
        .from_reader(&file.bytes[128..])
        .unwrap();
    let mut dataset = Vec::new();
    parsed
        .write_dataset_with_ts(
            &mut dataset,
            &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
    let receipt = archive
        .ingest_dataset(
            &dataset,
            ts::EXPLICIT_VR_LE,
            &file.sop_class_uid,
            &file.sop_instance_uid,
            Some("MODALITY1"),
            IngestSource::CStore {
                calling_ae: "MODALITY1".into(),
                peer: "127.0.0.1:5000".into(),
            },
        )
        .await;
    assert!(matches!(receipt, IngestReceipt::Stored(_)), "{receipt:?}");
    let back = archive.retrieve(&file.sop_instance_uid).await.unwrap();
    // The data set bytes are kept exactly as received, after a meta group.
    assert!(back.ends_with(&dataset));
    let reread = dicom_object::OpenFileOptions::new()
        .from_reader(&back[128..])
        .unwrap();
    assert_eq!(
        reread.meta().source_application_entity_title(),
        Some("MODALITY1")
    );
    let metadata: serde_json::Value = serde_json::from_str(
        &archive
            .catalog()
            .instance_metadata(&file.sop_instance_uid)
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    // DICOM JSON with the SOP Instance UID, and pixel data left as bulk data.
    assert_eq!(metadata["00080018"]["Value"][0], file.sop_instance_uid);
    assert_eq!(metadata["7FE00010"], serde_json::json!({"vr": "OW"}));
}
