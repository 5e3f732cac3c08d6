//! The S3 backend against a real S3-compatible server (s3s-fs) over HTTP on
//! 127.0.0.1: multipart objects, checksums the server verifies, a missing
//! bucket, and the server going away mid-run.

mod common;

use bytes::Bytes;
use pacs_archive::store::{ObjectStore, S3Store, StoreError};
use pacs_archive::{Archive, ArchiveError, IngestReceipt, IngestSource, RefusalReason};
use pacs_fixtures::{Kind, ts};

use common::*;

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn multipart_sized_object_roundtrips() {
    let Some(server) = s3_server() else { return };
    let mut config = server.config(BUCKET);
    config.multipart_threshold = 6 * 1024 * 1024;
    config.multipart_part_size = 5 * 1024 * 1024;
    let store = S3Store::connect(&config).await.unwrap();
    store.check().await.unwrap();
    let data = Bytes::from(pseudo_random(13 * 1024 * 1024 + 123, 42));
    store
        .put("blobs/sha256/aa/bb/big", data.clone())
        .await
        .unwrap();
    assert!(store.exists("blobs/sha256/aa/bb/big").await.unwrap());
    assert!(!store.exists("blobs/sha256/aa/bb/none").await.unwrap());
    let back = store.get("blobs/sha256/aa/bb/big").await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data);

    // And a whole ingest whose blob goes up in parts.
    let dir = tempfile::tempdir().unwrap();
    let mut archive_config = s3_archive_config(dir.path(), &server);
    archive_config.storage.s3.multipart_threshold = 1024 * 1024;
    archive_config.storage.s3.multipart_part_size = 5 * 1024 * 1024;
    let archive = Archive::open(archive_config).await.unwrap();
    let spec = pacs_fixtures::DatasetSpec {
        cr_size: (2048, 2500),
        ..pacs_fixtures::DatasetSpec::small()
    };
    let cr = spec
        .iter()
        .find(|f| f.kind == Kind::Cr)
        .expect("a CR in the set");
    let receipt = archive
        .ingest_part10(
            Bytes::from(cr.bytes.clone()),
            IngestSource::Other("t".into()),
        )
        .await;
    let stored = receipt.instance().expect("stored").clone();
    assert!(stored.stored_size > 1024 * 1024, "{stored:?}");
    assert!(archive.retrieve(&cr.sop_instance_uid).await.unwrap()[..] == cr.bytes[..]);
}

#[tokio::test]
async fn missing_bucket_is_a_clear_error() {
    let Some(server) = s3_server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut config = s3_archive_config(dir.path(), &server);
    config.storage.s3.bucket = "no-such-bucket".into();
    match Archive::open(config).await {
        Err(ArchiveError::Store(StoreError::BucketMissing(bucket))) => {
            assert_eq!(bucket, "no-such-bucket")
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("opened an archive on a missing bucket"),
    }
}

#[tokio::test]
async fn unreachable_store_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = pacs_archive::ArchiveConfig::embedded(dir.path());
    config.storage.backend = pacs_archive::StorageBackend::S3;
    config.storage.s3.endpoint = Some(format!("http://127.0.0.1:{}", free_port()));
    config.storage.s3.access_key_id = Some(ACCESS_KEY.into());
    config.storage.s3.secret_access_key = Some(SECRET_KEY.into());
    config.storage.s3.max_attempts = 2;
    match Archive::open(config).await {
        Err(ArchiveError::Store(StoreError::Unavailable(msg))) => {
            assert!(
                msg.to_lowercase().contains("connect") || msg.contains("dispatch"),
                "{msg}"
            )
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("opened an archive on an unreachable store"),
    }
}

#[tokio::test]
async fn server_checks_the_checksum_we_send() {
    // A PUT whose x-amz-checksum-sha256 does not match the body is refused by
    // the server: integrity is verified on the wire, not only by us.
    let Some(server) = s3_server() else { return };
    let config = server.config(BUCKET);
    let sdk_config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(server.endpoint())
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            ACCESS_KEY, SECRET_KEY, None, None, "test",
        ))
        .load()
        .await;
    let client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(true)
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .build(),
    );
    let wrong = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="; // SHA-256 of nothing
    let result = client
        .put_object()
        .bucket(&config.bucket)
        .key("tampered")
        .checksum_sha256(wrong)
        .body(aws_sdk_s3::primitives::ByteStream::from_static(
            b"not empty",
        ))
        .send()
        .await;
    let err = result.expect_err("server accepted a body that does not match its checksum");
    use aws_sdk_s3::error::ProvideErrorMetadata;
    assert_eq!(err.code(), Some("BadDigest"), "{err:?}");
    // (s3s-fs 0.14 leaves the refused object on disk anyway; the archive
    // never records a blob whose PUT failed, so it is never referenced.)
}

#[tokio::test]
async fn store_stopped_mid_run_refuses_and_records_nothing() {
    let Some(mut server) = s3_server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(s3_archive_config(dir.path(), &server))
        .await
        .unwrap();
    let first = pacs_fixtures::single(Kind::Mr, ts::EXPLICIT_VR_LE, 31);
    let second = pacs_fixtures::single(Kind::Mr, ts::EXPLICIT_VR_LE, 32);
    assert!(matches!(
        archive
            .ingest_part10(
                Bytes::from(first.bytes.clone()),
                IngestSource::Other("t".into())
            )
            .await,
        IngestReceipt::Stored(_)
    ));
    server.stop();
    let receipt = archive
        .ingest_part10(
            Bytes::from(second.bytes.clone()),
            IngestSource::Other("t".into()),
        )
        .await;
    match receipt {
        IngestReceipt::Refused(r) => {
            assert!(
                matches!(r.reason, RefusalReason::StoreUnavailable(_)),
                "{r:?}"
            );
            assert!(!r.reason.is_permanent());
            assert_eq!(
                r.sop_instance_uid.as_deref(),
                Some(second.sop_instance_uid.as_str())
            );
        }
        other => panic!("ingest succeeded without a store: {other:?}"),
    }
    let stats = archive.stats().await.unwrap();
    assert_eq!(stats.instances, 1);
    assert!(
        archive
            .catalog()
            .instance(&second.sop_instance_uid)
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        archive.retrieve(&first.sop_instance_uid).await,
        Err(ArchiveError::Store(StoreError::Unavailable(_)))
    ));
}
