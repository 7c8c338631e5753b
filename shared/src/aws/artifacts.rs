//! Export files in S3: multipart uploads (chunks of at least 5 MiB but the
//! last, enforced by S3 and set by `EngineConfig::min_chunk_bytes`), and
//! presigned GET URLs made fresh at each download.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::Bytes;

use super::backend;
use crate::domain::job::content_type_of;
use crate::domain::job::UploadedChunk;
use crate::ports::{ArtifactStore, PortError, PortResult};

/// S3 deletes at most this many keys per request.
const DELETE_BATCH: usize = 1000;

#[derive(Clone)]
pub struct S3Artifacts {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// What signs presigned links (their real lifetime ends with it).
    credentials: Option<aws_sdk_s3::config::SharedCredentialsProvider>,
}

impl S3Artifacts {
    /// An object's bytes, or those of an HTTP `range` of it (none when the
    /// range starts at or past its end: S3's 416).
    async fn get_object(&self, key: &str, range: Option<String>) -> PortResult<Bytes> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_range(range)
            .send()
            .await
        {
            Ok(out) => out,
            Err(SdkError::ServiceError(s)) if s.err().is_no_such_key() => {
                return Err(PortError::NotFound)
            }
            Err(SdkError::ServiceError(s)) if s.raw().status().as_u16() == 416 => {
                return Ok(Bytes::new())
            }
            Err(e) => return Err(backend(e)),
        };
        let data = out.body.collect().await.map_err(backend)?;
        Ok(data.into_bytes())
    }

    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        S3Artifacts {
            client,
            bucket: bucket.into(),
            credentials: None,
        }
    }

    /// The credentials the client signs with (the SDK configuration's).
    pub fn with_credentials(
        mut self,
        credentials: Option<aws_sdk_s3::config::SharedCredentialsProvider>,
    ) -> Self {
        self.credentials = credentials;
        self
    }
}

#[async_trait]
impl ArtifactStore for S3Artifacts {
    async fn start_upload(&self, key: &str) -> PortResult<String> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type_of(key))
            // A gzip twin: S3 serves it as compressed NDJSON.
            .set_content_encoding(key.ends_with(".gz").then(|| "gzip".to_string()))
            .send()
            .await
            .map_err(backend)?;
        out.upload_id().map(str::to_string).ok_or_else(|| {
            PortError::transient("the file store answered oddly", "S3 returned no upload id")
        })
    }

    async fn upload_chunk(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: Bytes,
    ) -> PortResult<String> {
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number as i32)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| match &e {
                SdkError::ServiceError(s) if s.raw().status().as_u16() == 404 => {
                    PortError::NotFound
                }
                _ => backend(e),
            })?;
        out.e_tag().map(str::to_string).ok_or_else(|| {
            PortError::transient("the file store answered oddly", "S3 returned no ETag")
        })
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        chunks: &[UploadedChunk],
    ) -> PortResult<()> {
        if chunks.is_empty() {
            // S3 cannot complete an upload without parts: an empty file.
            self.abort_upload(key, upload_id).await?;
            return self.put(key, Bytes::new()).await;
        }
        let parts = chunks
            .iter()
            .map(|c| {
                CompletedPart::builder()
                    .part_number(c.number as i32)
                    .e_tag(&c.etag)
                    .build()
            })
            .collect();
        let result = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Completed before (a resumed handling repeats it): the object
            // is there. Only the handling whose checkpoint won completes an
            // upload, so an object under this key is that upload's.
            Err(SdkError::ServiceError(s)) if s.err().code() == Some("NoSuchUpload") => {
                if self.exists(key).await? {
                    Ok(())
                } else {
                    Err(PortError::NotFound)
                }
            }
            Err(e) => Err(backend(e)),
        }
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> PortResult<()> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Already aborted or completed: nothing left to do.
            Err(SdkError::ServiceError(s)) if s.err().is_no_such_upload() => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    async fn delete(&self, key: &str) -> PortResult<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn retain_only(&self, prefix: &str, keep: &[String]) -> PortResult<()> {
        for (key, upload_id) in self.open_uploads(prefix).await? {
            self.abort_upload(&key, &upload_id).await?;
        }
        let mut doomed = self.list(prefix).await?;
        doomed.retain(|k| !keep.contains(k));
        self.delete_keys(&doomed).await
    }

    async fn get(&self, key: &str) -> PortResult<Bytes> {
        self.get_object(key, None).await
    }

    async fn get_range(&self, key: &str, offset: u64, len: usize) -> PortResult<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let range = format!("bytes={offset}-{}", offset + len as u64 - 1);
        self.get_object(key, Some(range)).await
    }

    async fn put(&self, key: &str, data: Bytes) -> PortResult<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type_of(key))
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str) -> PortResult<()> {
        // Uploads first: a part finishing meanwhile cannot then complete an
        // object after the listing below.
        let mut uploads = self.open_uploads(prefix).await?;
        for (key, upload_id) in uploads.drain(..) {
            self.abort_upload(&key, &upload_id).await?;
        }
        let keys = self.list(prefix).await?;
        self.delete_keys(&keys).await
    }

    async fn list(&self, prefix: &str) -> PortResult<Vec<String>> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(backend)?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        Ok(keys)
    }

    async fn list_uploads(&self, prefix: &str) -> PortResult<Vec<String>> {
        Ok(self
            .open_uploads(prefix)
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .collect())
    }

    async fn presign_get(&self, key: &str, ttl: Duration) -> PortResult<String> {
        let config = PresigningConfig::expires_in(ttl).map_err(backend)?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(backend)?;
        Ok(request.uri().to_string())
    }

    async fn signing_credentials_expiry(
        &self,
    ) -> PortResult<Option<chrono::DateTime<chrono::Utc>>> {
        use aws_sdk_s3::config::ProvideCredentials;
        let Some(provider) = &self.credentials else {
            return Ok(None);
        };
        let credentials = provider.provide_credentials().await.map_err(|e| {
            PortError::transient("the service's credentials are unavailable", e.to_string())
        })?;
        Ok(credentials
            .expiry()
            .map(chrono::DateTime::<chrono::Utc>::from))
    }
}

impl S3Artifacts {
    async fn exists(&self, key: &str) -> PortResult<bool> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(s)) if s.err().is_not_found() => Ok(false),
            Err(e) => Err(backend(e)),
        }
    }

    async fn delete_keys(&self, keys: &[String]) -> PortResult<()> {
        for batch in keys.chunks(DELETE_BATCH) {
            let objects = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build().map_err(backend))
                .collect::<PortResult<Vec<_>>>()?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(
                    Delete::builder()
                        .set_objects(Some(objects))
                        .quiet(true)
                        .build()
                        .map_err(backend)?,
                )
                .send()
                .await
                .map_err(backend)?;
            if let Some(e) = out.errors().first() {
                return Err(PortError::transient(
                    "the file store could not delete a file",
                    format!(
                        "S3 could not delete {}: {}",
                        e.key().unwrap_or_default(),
                        e.message().unwrap_or_default()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// (key, upload id) of every open multipart upload under `prefix`.
    async fn open_uploads(&self, prefix: &str) -> PortResult<Vec<(String, String)>> {
        let mut uploads = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(backend)?;
            for u in page.uploads() {
                if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                    uploads.push((k.to_string(), id.to_string()));
                }
            }
            if !page.is_truncated().unwrap_or(false) {
                return Ok(uploads);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() {
                return Ok(uploads);
            }
        }
    }
}
