//! Bad input gets a clear, typed refusal and changes nothing.

mod common;

use bytes::Bytes;
use dicom_dictionary_std::tags;
use pacs_archive::{IngestReceipt, IngestSource, RefusalReason};
use pacs_fixtures::{Kind, ts};

use common::*;

async fn refusal_of(data_dir: &std::path::Path, bytes: Vec<u8>) -> RefusalReason {
    let archive = fs_archive(data_dir).await;
    match archive
        .ingest_part10(Bytes::from(bytes), IngestSource::Other("test".into()))
        .await
    {
        IngestReceipt::Refused(r) => r.reason,
        other => panic!("bad input accepted: {other:?}"),
    }
}

async fn assert_nothing_stored(data_dir: &std::path::Path) {
    let archive = fs_archive(data_dir).await;
    let stats = archive.stats().await.unwrap();
    assert_eq!(stats.instances, 0);
    assert_eq!(stats.studies, 0);
    assert_eq!(stats.patients, 0);
    assert_eq!(stats.blobs, 0);
    assert_eq!(fs_blob_count(data_dir), 0);
    assert!(
        archive
            .catalog()
            .changes_since(0, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn each_kind_of_bad_input_gets_its_own_refusal() {
    let good = pacs_fixtures::single(Kind::Ct, ts::EXPLICIT_VR_LE, 5).bytes;
    let dir = tempfile::tempdir().unwrap();

    assert_eq!(
        refusal_of(dir.path(), Vec::new()).await,
        RefusalReason::Empty
    );

    let reason = refusal_of(dir.path(), good[..good.len() - 1000].to_vec()).await;
    assert!(
        matches!(reason, RefusalReason::Unparseable(_)),
        "truncated: {reason:?}"
    );

    // Truncated inside the header, before the pixel data.
    let reason = refusal_of(dir.path(), good[..700].to_vec()).await;
    assert!(
        matches!(reason, RefusalReason::Unparseable(_)),
        "truncated header: {reason:?}"
    );

    let reason = refusal_of(dir.path(), b"%PDF-1.4 this is not DICOM at all".repeat(20)).await;
    assert!(
        matches!(reason, RefusalReason::NotDicom(_)),
        "non-DICOM: {reason:?}"
    );

    let reason = refusal_of(dir.path(), edited(&good, without(tags::SOP_INSTANCE_UID))).await;
    assert_eq!(reason, RefusalReason::MissingAttribute("SOPInstanceUID"));
    assert!(reason.to_string().contains("SOPInstanceUID"));

    let reason = refusal_of(dir.path(), edited(&good, without(tags::SOP_CLASS_UID))).await;
    assert_eq!(reason, RefusalReason::MissingAttribute("SOPClassUID"));

    let reason = refusal_of(
        dir.path(),
        edited(&good, with_uid(tags::STUDY_INSTANCE_UID, "1.2.840.abc.7")),
    )
    .await;
    match &reason {
        RefusalReason::MalformedUid {
            attribute, value, ..
        } => {
            assert_eq!(*attribute, "StudyInstanceUID");
            assert_eq!(value, "1.2.840.abc.7");
        }
        other => panic!("malformed study UID: {other:?}"),
    }
    assert!(reason.is_permanent());

    let reason = refusal_of(
        dir.path(),
        edited(&good, with_uid(tags::SERIES_INSTANCE_UID, "1..2")),
    )
    .await;
    assert!(matches!(
        reason,
        RefusalReason::MalformedUid {
            attribute: "SeriesInstanceUID",
            ..
        }
    ));

    // A transfer syntax nobody knows: same length as Explicit VR LE, so the
    // file meta group stays well formed.
    let mut unknown = good.clone();
    let at = unknown
        .windows(19)
        .position(|w| w == b"1.2.840.10008.1.2.1")
        .expect("transfer syntax in the meta group");
    unknown[at..at + 19].copy_from_slice(b"1.2.999.99999.9.9.9");
    let reason = refusal_of(dir.path(), unknown).await;
    assert_eq!(
        reason,
        RefusalReason::UnknownTransferSyntax("1.2.999.99999.9.9.9".into())
    );

    assert_nothing_stored(dir.path()).await;
}

#[tokio::test]
async fn empty_type2_attributes_are_stored_as_sent() {
    // Real modalities send empty Patient ID and names: store, don't invent.
    let good = pacs_fixtures::single(Kind::Mr, ts::IMPLICIT_VR_LE, 9).bytes;
    let blank = edited(&good, |obj| {
        for tag in [tags::PATIENT_ID, tags::PATIENT_NAME, tags::ACCESSION_NUMBER] {
            obj.put(dicom_core::DataElement::new(
                tag,
                dicom_core::dictionary::DataDictionary::by_tag(
                    &dicom_dictionary_std::StandardDataDictionary,
                    tag,
                )
                .map(|e| e.vr.relaxed())
                .unwrap_or(dicom_core::VR::LO),
                dicom_core::PrimitiveValue::Empty,
            ));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let archive = fs_archive(dir.path()).await;
    let receipt = archive
        .ingest_part10(
            Bytes::from(blank.clone()),
            IngestSource::Other("test".into()),
        )
        .await;
    assert!(matches!(receipt, IngestReceipt::Stored(_)), "{receipt:?}");
    let stats = archive.stats().await.unwrap();
    assert_eq!((stats.patients, stats.instances), (1, 1));
    let uid = receipt.instance().unwrap().sop_instance_uid.clone();
    assert!(archive.retrieve(&uid).await.unwrap()[..] == blank[..]);
}
