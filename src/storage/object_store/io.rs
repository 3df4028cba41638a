//! The requests: every storage operation of the s3 backend through the `object_store` crate
//! (signed with SigV4, retried on transient failures by the crate). Errors carry the key and
//! what failed, never credentials or signed URLs.

use std::time::Duration;

use ::object_store::path::Path as ObjectPath;
use ::object_store::signer::Signer;
use ::object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};

use super::ObjectStoreBackend;
use crate::error::{QuotaError, Result};
use crate::ids::{ProjectId, UserId};
use crate::storage::{ByteStream, DiskUsage, Location, PathCheck, StorageBackend, StoredFile};

/// Bodies up to this size go in one `PUT`; larger ones as a multipart upload of parts this
/// size (S3 wants at least 5 MiB per part but the last).
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts of one multipart upload in flight at once.
const PART_CONCURRENCY: usize = 4;
/// Copies and deletes in flight at once for a whole project.
const OBJECT_CONCURRENCY: usize = 8;

fn failed(what: &str, key: &ObjectPath, error: ::object_store::Error) -> QuotaError {
  QuotaError::Storage(format!("s3: {what} {key} failed: {}", short(&error)))
}

/// The crate's message without its source chain's request details (URLs can be signed).
fn short(error: &::object_store::Error) -> String {
  match error {
    ::object_store::Error::NotFound { .. } => "not found".into(),
    ::object_store::Error::Generic { store, .. } => format!("{store} request failed ({error})"),
    other => other.to_string(),
  }
  .split("?X-Amz-")
  .next()
  .unwrap_or_default()
  .to_owned()
}

impl ObjectStoreBackend {
  async fn list_objects(&self, prefix: &ObjectPath) -> Result<Vec<(ObjectPath, i64)>> {
    self
      .store
      .list(Some(prefix))
      .map_ok(|meta| (meta.location, meta.size as i64))
      .try_collect()
      .await
      .map_err(|e| failed("listing", prefix, e))
  }

  async fn delete_all(&self, paths: Vec<ObjectPath>) -> Result<()> {
    let stream = futures::stream::iter(paths.into_iter().map(Ok)).boxed();
    self
      .store
      .delete_stream(stream)
      .try_for_each(|_| async { Ok(()) })
      .await
      .map_err(|e| QuotaError::Storage(format!("s3: deleting objects failed: {}", short(&e))))
  }

  /// `path` relative to the project prefix.
  fn relative(&self, project_prefix: &ObjectPath, path: &ObjectPath) -> String {
    path
      .prefix_match(project_prefix)
      .map(|parts| {
        parts
          .map(|p| p.as_ref().to_owned())
          .collect::<Vec<_>>()
          .join("/")
      })
      .unwrap_or_default()
  }
}

#[async_trait]
impl StorageBackend for ObjectStoreBackend {
  fn name(&self) -> &'static str {
    "s3"
  }

  fn locate(&self, user: &UserId, project: &ProjectId) -> Result<Location> {
    self.locate_key(user, project)
  }

  async fn prepare(&self, _user: &UserId, _project: &ProjectId) -> Result<()> {
    // Object stores have no directories: the first object makes the prefix.
    Ok(())
  }

  async fn check_path(
    &self,
    user: &UserId,
    project: &ProjectId,
    candidate: &str,
  ) -> Result<PathCheck> {
    self.check_key(user, project, candidate)
  }

  async fn usage(&self, user: &UserId, project: &ProjectId) -> Result<DiskUsage> {
    let files = self.list(user, project).await?;
    let bytes = files.iter().map(|f| f.bytes).sum();
    Ok(DiskUsage {
      bytes,
      // Objects are billed by their size: there is no block rounding to report.
      allocated_bytes: bytes,
      files: files.len() as i64,
      directories: 0,
      skipped: 0,
    })
  }

  async fn list(&self, user: &UserId, project: &ProjectId) -> Result<Vec<StoredFile>> {
    let prefix = self.project_path(user, project)?;
    let mut files: Vec<StoredFile> = self
      .list_objects(&prefix)
      .await?
      .into_iter()
      .map(|(path, bytes)| StoredFile {
        path: self.relative(&prefix, &path),
        bytes,
      })
      .filter(|f| !f.path.is_empty())
      .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
  }

  async fn copy_project(&self, user: &UserId, from: &ProjectId, to: &ProjectId) -> Result<i64> {
    let source = self.project_path(user, from)?;
    let target = self.project_path(user, to)?;
    let objects = self.list_objects(&source).await?;
    let pairs = objects
      .into_iter()
      .map(|(path, bytes)| {
        let destination =
          super::object_path(&format!("{target}/{}", self.relative(&source, &path)))?;
        Ok((path, destination, bytes))
      })
      .collect::<Result<Vec<_>>>()?;
    let copies = pairs.into_iter().map(|(path, destination, bytes)| {
      let store = self.store.clone();
      async move {
        store
          .copy(&path, &destination)
          .await
          .map_err(|e| failed("copying", &path, e))
          .map(|()| bytes)
      }
    });
    let copied: Result<Vec<i64>> = futures::stream::iter(copies)
      .buffer_unordered(OBJECT_CONCURRENCY)
      .try_collect()
      .await;
    match copied {
      Ok(sizes) => Ok(sizes.into_iter().sum()),
      Err(error) => {
        // Nothing half-copied stays: the target was empty before.
        let _ = self.remove_project(user, to).await;
        Err(error)
      }
    }
  }

  async fn remove_project(&self, user: &UserId, project: &ProjectId) -> Result<()> {
    let prefix = self.project_path(user, project)?;
    let paths = self
      .list_objects(&prefix)
      .await?
      .into_iter()
      .map(|(path, _)| path)
      .collect();
    self.delete_all(paths).await
  }

  async fn file_size(&self, user: &UserId, project: &ProjectId, file: &str) -> Result<Option<i64>> {
    let path = self.file_path(user, project, file)?;
    match self.store.head(&path).await {
      Ok(meta) => Ok(Some(meta.size as i64)),
      Err(::object_store::Error::NotFound { .. }) => Ok(None),
      Err(error) => Err(failed("HEAD", &path, error)),
    }
  }

  async fn read(&self, user: &UserId, project: &ProjectId, file: &str) -> Result<ByteStream> {
    let path = self.file_path(user, project, file)?;
    let result = self
      .store
      .get(&path)
      .await
      .map_err(|e| failed("GET", &path, e))?;
    Ok(
      result
        .into_stream()
        .map_err(move |e| failed("reading", &path, e))
        .boxed(),
    )
  }

  async fn write(
    &self,
    user: &UserId,
    project: &ProjectId,
    file: &str,
    mut body: ByteStream,
  ) -> Result<i64> {
    let path = self.file_path(user, project, file)?;
    // Small bodies in one PUT; from the first full part on, a multipart upload.
    let mut first = BytesMut::new();
    while first.len() <= PART_BYTES {
      match body.next().await {
        Some(chunk) => first.extend_from_slice(&chunk?),
        None => {
          let bytes = first.len() as i64;
          self
            .store
            .put(&path, PutPayload::from(first.freeze()))
            .await
            .map_err(|e| failed("PUT", &path, e))?;
          return Ok(bytes);
        }
      }
    }
    let upload = self
      .store
      .put_multipart(&path)
      .await
      .map_err(|e| failed("starting the multipart upload of", &path, e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut written = first.len() as i64;
    writer.put(first.freeze());
    let outcome: Result<()> = async {
      while let Some(chunk) = body.next().await {
        let chunk: Bytes = chunk?;
        written += chunk.len() as i64;
        writer
          .wait_for_capacity(PART_CONCURRENCY)
          .await
          .map_err(|e| failed("uploading a part of", &path, e))?;
        writer.put(chunk);
      }
      Ok(())
    }
    .await;
    match outcome {
      Ok(()) => {
        writer
          .finish()
          .await
          .map_err(|e| failed("completing the multipart upload of", &path, e))?;
        Ok(written)
      }
      Err(error) => {
        let _ = writer.abort().await;
        Err(error)
      }
    }
  }

  async fn delete(&self, user: &UserId, project: &ProjectId, file: &str) -> Result<()> {
    let path = self.file_path(user, project, file)?;
    match self.store.delete(&path).await {
      Ok(()) | Err(::object_store::Error::NotFound { .. }) => Ok(()),
      Err(error) => Err(failed("DELETE", &path, error)),
    }
  }

  async fn presign_put(
    &self,
    user: &UserId,
    project: &ProjectId,
    file: &str,
    expires_in: Duration,
  ) -> Result<String> {
    let path = self.file_path(user, project, file)?;
    self
      .store
      .signed_url(http::Method::PUT, &path, expires_in)
      .await
      .map(|url| url.to_string())
      .map_err(|e| failed("presigning a PUT of", &path, e))
  }
}
