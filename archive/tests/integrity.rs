//! A damaged blob is an integrity error that names the instance, never a
//! silent answer; `Archive::verify` finds it.

mod common;

use bytes::Bytes;
use pacs_archive::{ArchiveError, IngestReceipt, IngestSource};
use pacs_fixtures::{Kind, ts};

use common::*;

#[tokio::test]
async fn flipped_byte_is_caught_by_retrieval_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let archive = fs_archive(dir.path()).await;
    let victim = pacs_fixtures::single(Kind::Ct, ts::EXPLICIT_VR_LE, 21);
    let bystander = pacs_fixtures::single(Kind::Mr, ts::EXPLICIT_VR_LE, 22);
    let mut victim_key = String::new();
    for file in [&victim, &bystander] {
        let receipt = archive
            .ingest_part10(
                Bytes::from(file.bytes.clone()),
                IngestSource::Other("t".into()),
            )
            .await;
        let IngestReceipt::Stored(stored) = receipt else {
            panic!("{receipt:?}")
        };
        if file.sop_instance_uid == victim.sop_instance_uid {
            victim_key = pacs_archive::store::blob_key(&stored.sha256);
        }
    }
    assert!(archive.verify(|_| {}).await.unwrap().damaged.is_empty());

    let path = dir.path().join("objects").join(&victim_key);
    let mut blob = std::fs::read(&path).unwrap();
    let middle = blob.len() / 2;
    blob[middle] ^= 0x01;
    std::fs::write(&path, &blob).unwrap();

    match archive.retrieve(&victim.sop_instance_uid).await {
        Err(err @ ArchiveError::Integrity { .. }) => {
            assert!(err.to_string().contains(&victim.sop_instance_uid), "{err}");
        }
        other => panic!("damaged blob served: {:?}", other.map(|b| b.len())),
    }
    assert!(archive.retrieve(&bystander.sop_instance_uid).await.is_ok());

    let report = archive.verify(|_| {}).await.unwrap();
    assert_eq!(report.checked, 2);
    assert_eq!(report.damaged.len(), 1);
    assert_eq!(report.damaged[0].0, victim.sop_instance_uid);

    // A missing blob is damage too.
    std::fs::remove_file(&path).unwrap();
    let report = archive.verify(|_| {}).await.unwrap();
    assert_eq!(report.damaged.len(), 1);
    assert!(
        report.damaged[0].1.contains("missing"),
        "{:?}",
        report.damaged
    );
}
