//! The S3 backend on aws-sdk-s3, for any S3-compatible server.
//!
//! Every PUT carries `x-amz-checksum-sha256` of the bytes sent, so the server
//! verifies what it stores; objects at or above the multipart threshold go up
//! in parts, each with its own checksum. Requests in flight are bounded by a
//! semaphore; the SDK retries transient failures with exponential backoff.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    retry::RetryConfig, timeout::TimeoutConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use base64::Engine;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::{ObjectStore, StoreError};
use crate::config::S3Config;

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    config: Arc<S3Config>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Store({})", self.describe())
    }
}

fn sha256_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data))
}

/// Turn an SDK error into a store error: unreachable servers, a missing
/// bucket and refused requests each get their own variant.
fn classify<E, R>(err: SdkError<E, R>, bucket: &str, key: &str) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            let mut msg = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            StoreError::Unavailable(msg)
        }
        SdkError::ServiceError(service) => {
            let e = service.err();
            match e.code() {
                Some("NoSuchBucket") => StoreError::BucketMissing(bucket.to_owned()),
                Some("NoSuchKey") | Some("NotFound") => StoreError::NotFound(key.to_owned()),
                code => StoreError::Rejected {
                    key: key.to_owned(),
                    detail: format!(
                        "{}: {}",
                        code.unwrap_or("error"),
                        e.message().unwrap_or("no message")
                    ),
                },
            }
        }
        _ => StoreError::Unavailable(format!("{err}")),
    }
}

impl S3Store {
    /// Build a client from the configuration. Credentials come from the
    /// config when both keys are set, else from the standard AWS chain
    /// (environment variables `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
    /// profile files, ...). Nothing is contacted until the first request;
    /// call [`ObjectStore::check`] to fail fast.
    pub async fn connect(config: &S3Config) -> Result<Self, StoreError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(config.max_attempts.max(1))
                    .with_initial_backoff(Duration::from_millis(100))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
                    .operation_attempt_timeout(Duration::from_millis(config.attempt_timeout_ms))
                    .build(),
            );
        if let (Some(ak), Some(sk)) = (&config.access_key_id, &config.secret_access_key)
            && !ak.is_empty()
        {
            loader = loader.credentials_provider(Credentials::new(
                ak.clone(),
                sk.clone(),
                None,
                None,
                "pacs-config",
            ));
        }
        if let Some(endpoint) = config.endpoint.as_deref().filter(|e| !e.is_empty()) {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        let s3_config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.force_path_style)
            // We compute and send SHA-256 checksums ourselves.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        if config.multipart_part_size < 5 * 1024 * 1024 {
            tracing::warn!(
                part_size = config.multipart_part_size,
                "multipart part size below 5 MiB: AWS S3 will refuse it"
            );
        }
        Ok(S3Store {
            client: Client::from_conf(s3_config),
            config: Arc::new(config.clone()),
            permits: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
        })
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{}", self.config.prefix, key)
    }

    async fn put_single(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("semaphore never closed");
        let checksum = sha256_b64(&data);
        let len = data.len() as i64;
        self.client
            .put_object()
            .bucket(&self.config.bucket)
            .key(key)
            .content_length(len)
            .checksum_sha256(checksum)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| classify(e, &self.config.bucket, key))?;
        Ok(())
    }

    async fn put_multipart(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let bucket = &self.config.bucket;
        let created = {
            let _permit = self
                .permits
                .acquire()
                .await
                .expect("semaphore never closed");
            self.client
                .create_multipart_upload()
                .bucket(bucket)
                .key(key)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .send()
                .await
                .map_err(|e| classify(e, bucket, key))?
        };
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StoreError::Rejected {
                key: key.to_owned(),
                detail: "server returned no upload id".into(),
            })?
            .to_owned();

        let part_size = self.config.multipart_part_size.max(1) as usize;
        let chunks: Vec<(i32, Bytes)> = (0..data.len())
            .step_by(part_size)
            .enumerate()
            .map(|(i, start)| {
                let end = (start + part_size).min(data.len());
                (i as i32 + 1, data.slice(start..end))
            })
            .collect();
        let uploads = futures::stream::iter(chunks)
            .map(|(number, chunk)| {
                let upload_id = upload_id.clone();
                async move {
                    let _permit = self
                        .permits
                        .acquire()
                        .await
                        .expect("semaphore never closed");
                    let checksum = sha256_b64(&chunk);
                    let out = self
                        .client
                        .upload_part()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(&upload_id)
                        .part_number(number)
                        .content_length(chunk.len() as i64)
                        .checksum_sha256(checksum.clone())
                        .body(ByteStream::from(chunk))
                        .send()
                        .await
                        .map_err(|e| classify(e, bucket, key))?;
                    Ok::<_, StoreError>(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(out.e_tag().map(str::to_owned))
                            .checksum_sha256(checksum)
                            .build(),
                    )
                }
            })
            .buffered(4)
            .try_collect::<Vec<_>>()
            .await;

        let result = match uploads {
            Ok(parts) => {
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .expect("semaphore never closed");
                self.client
                    .complete_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| classify(e, bucket, key))
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            // Best effort: don't leave orphaned parts behind.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }
}

impl ObjectStore for S3Store {
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let key = self.full_key(key);
            if data.len() as u64 >= self.config.multipart_threshold {
                self.put_multipart(&key, data).await
            } else {
                self.put_single(&key, data).await
            }
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Bytes, StoreError>> {
        async move {
            let key = self.full_key(key);
            let _permit = self
                .permits
                .acquire()
                .await
                .expect("semaphore never closed");
            let out = self
                .client
                .get_object()
                .bucket(&self.config.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| classify(e, &self.config.bucket, &key))?;
            let body = out
                .body
                .collect()
                .await
                .map_err(|e| StoreError::Unavailable(format!("reading {key}: {e}")))?;
            Ok(body.into_bytes())
        }
        .boxed()
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let key = self.full_key(key);
            let _permit = self
                .permits
                .acquire()
                .await
                .expect("semaphore never closed");
            match self
                .client
                .head_object()
                .bucket(&self.config.bucket)
                .key(&key)
                .send()
                .await
            {
                Ok(_) => Ok(true),
                Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => {
                    if e.err().code() == Some("NoSuchBucket") {
                        Err(StoreError::BucketMissing(self.config.bucket.clone()))
                    } else {
                        Ok(false)
                    }
                }
                Err(e) => Err(classify(e, &self.config.bucket, &key)),
            }
        }
        .boxed()
    }

    fn check(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let bucket = &self.config.bucket;
            match self.client.head_bucket().bucket(bucket).send().await {
                Ok(_) => Ok(()),
                Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => {
                    Err(StoreError::BucketMissing(bucket.clone()))
                }
                Err(e) => Err(classify(e, bucket, "")),
            }
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!(
            "s3:{}/{}{}",
            self.config.endpoint.as_deref().unwrap_or("aws"),
            self.config.bucket,
            if self.config.prefix.is_empty() {
                String::new()
            } else {
                format!("/{}", self.config.prefix)
            }
        )
    }
}
