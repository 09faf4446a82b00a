//! The bucket: puts (multipart for large objects), ranged gets, deletes and listings through
//! aws-sdk-s3, with each failure sorted into denied, not found or retriable.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;

use crate::error::{Result, TieringError};

/// Where the bucket is: Kafka has no names for these, so they are Fjord's (`s3_*`).
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    pub bucket: String,
    pub region: String,
    /// An S3-compatible endpoint (addressed path-style); None: AWS's own for the region.
    pub endpoint: Option<String>,
    /// Prefix of every object Fjord writes, without a trailing slash; may be empty.
    pub prefix: String,
}

/// Objects larger than this go up in parts of `PART_BYTES`.
pub const MULTIPART_FROM: u64 = 16 << 20;
pub const PART_BYTES: u64 = 8 << 20;

pub struct RemoteStore {
    client: Client,
    bucket: String,
    prefix: String,
}

type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

fn classify<E>(op: &'static str, key: &str, e: SdkError<E, HttpResponse>) -> TieringError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.code().unwrap_or_default().to_string();
    // What the bucket answered, in a line; a request that got no answer says why at length.
    let msg = match status {
        Some(st) => {
            let detail = e.message().map(|m| format!(": {m}")).unwrap_or_default();
            format!("HTTP {st} {code}{detail}").trim_end().to_string()
        }
        None => DisplayErrorContext(&e).to_string(),
    };
    let key = key.to_string();
    let denied = matches!(status, Some(401 | 403))
        || matches!(
            code.as_str(),
            "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken"
        );
    if denied {
        TieringError::Denied { op, key, msg }
    } else if status == Some(404) || matches!(code.as_str(), "NoSuchKey" | "NoSuchBucket" | "NotFound") {
        TieringError::NotFound { op, key, msg }
    } else {
        TieringError::Unavailable { op, key, msg }
    }
}

impl RemoteStore {
    /// A client for `cfg`, with credentials from the standard AWS chain. Makes no request.
    pub async fn connect(cfg: &S3Config) -> Result<RemoteStore> {
        if cfg.bucket.trim().is_empty() {
            return Err(TieringError::Config("s3_bucket is empty".into()));
        }
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            // One attempt; the copier and readers retry on their own terms.
            .operation_attempt_timeout(Duration::from_secs(60))
            .build();
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .timeout_config(timeouts)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2))
            .load()
            .await;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            // Checksums only where S3 requires them: S3-compatible stores differ in the rest.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(ep) = cfg.endpoint.as_ref().filter(|e| !e.trim().is_empty()) {
            b = b.endpoint_url(ep.trim()).force_path_style(true);
        }
        let prefix = cfg.prefix.trim_matches('/').to_string();
        Ok(RemoteStore { client: Client::from_conf(b.build()), bucket: cfg.bucket.clone(), prefix })
    }

    /// Checks the bucket answers these credentials (HeadBucket).
    pub async fn check(&self) -> Result<()> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("HeadBucket", &self.bucket, e))
    }

    /// The key of `name` under the configured prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    /// Where a partition's objects go: topic names are unique only while the topic lives, so
    /// the id is in the name too (a topic deleted and created again starts afresh).
    pub fn partition_dir(&self, topic: &str, topic_id: &str, partition: i32) -> String {
        self.key(&format!("{topic}-{topic_id}/{partition}"))
    }

    pub async fn put(&self, key: &str, body: Bytes) -> Result<()> {
        let n = body.len() as u64;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| classify("PutObject", key, e))?;
        metrics::counter!("fjord_remote_bytes_uploaded_total").increment(n);
        Ok(())
    }

    /// Puts `len` bytes of `file` (read at their positions, so an unlinked file still reads):
    /// one request, or a multipart upload in `PART_BYTES` parts, aborted on failure so no
    /// part is left behind.
    pub async fn put_file(&self, key: &str, file: Arc<File>, len: u64) -> Result<()> {
        if len < MULTIPART_FROM {
            let body = read_at(file, 0, len).await?;
            return self.put(key, body).await;
        }
        let up = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("CreateMultipartUpload", key, e))?;
        let Some(upload_id) = up.upload_id().map(str::to_string) else {
            return Err(TieringError::Unavailable {
                op: "CreateMultipartUpload",
                key: key.into(),
                msg: "no upload id".into(),
            });
        };
        let res = self.put_parts(key, &upload_id, file, len).await;
        if res.is_err() {
            let _ =
                self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(&upload_id).send().await;
        }
        res
    }

    async fn put_parts(&self, key: &str, upload_id: &str, file: Arc<File>, len: u64) -> Result<()> {
        let mut parts = Vec::new();
        let mut pos = 0;
        let mut number = 1;
        while pos < len {
            let n = PART_BYTES.min(len - pos);
            let body = read_at(file.clone(), pos, n).await?;
            let out = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| classify("UploadPart", key, e))?;
            metrics::counter!("fjord_remote_bytes_uploaded_total").increment(n);
            parts.push(CompletedPart::builder().set_e_tag(out.e_tag().map(str::to_string)).part_number(number).build());
            pos += n;
            number += 1;
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| classify("CompleteMultipartUpload", key, e))?;
        Ok(())
    }

    /// Bytes [start, end) of an object.
    pub async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        if end <= start {
            return Ok(Bytes::new());
        }
        let data = self.get_object(key, Some(format!("bytes={start}-{}", end - 1))).await?;
        if data.len() as u64 != end - start {
            return Err(TieringError::Corrupt {
                key: key.into(),
                why: format!("asked for {} bytes at {start}, got {}", end - start, data.len()),
            });
        }
        Ok(data)
    }

    /// A whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        self.get_object(key, None).await
    }

    async fn get_object(&self, key: &str, range: Option<String>) -> Result<Bytes> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_range(range)
            .send()
            .await
            .map_err(|e| classify("GetObject", key, e))?;
        let data = out.body.collect().await.map_err(|e| TieringError::Unavailable {
            op: "GetObject",
            key: key.into(),
            msg: e.to_string(),
        })?;
        let data = data.into_bytes();
        metrics::counter!("fjord_remote_bytes_downloaded_total").increment(data.len() as u64);
        Ok(data)
    }

    /// Deletes `key`; one that is already gone counts as deleted.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.client.delete_object().bucket(&self.bucket).key(key).send().await {
            Ok(_) => Ok(()),
            Err(e) => match classify("DeleteObject", key, e) {
                TieringError::NotFound { .. } => Ok(()),
                e => Err(e),
            },
        }
    }

    /// Every key under `prefix`, in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| classify("ListObjectsV2", prefix, e))?;
            keys.extend(out.contents().iter().filter_map(|o| o.key().map(str::to_string)));
            match out.next_continuation_token() {
                Some(t) if out.is_truncated().unwrap_or(false) => token = Some(t.to_string()),
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    }
}

/// `len` bytes of `file` at `pos`, read off the async runtime.
async fn read_at(file: Arc<File>, pos: u64, len: u64) -> Result<Bytes> {
    let data = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, pos)?;
        Ok(buf)
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(Bytes::from(data))
}
