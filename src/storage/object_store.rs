//! The object-store backend: a project is the key prefix `{prefix}/{userId}/{projectId}/` in a
//! bucket, shown as `s3://{bucket}/{prefix}/{userId}/{projectId}/`. Object stores have no
//! directories, so allocation only records the prefix: nothing is written, locally or remotely,
//! and no network is needed. The app uploads with its own S3 client to `{prefix}/{key}{file}`.
//!
//! No S3 client crate is linked: computing a prefix needs none, and the `object_store` crate's
//! S3 support would add an HTTP and TLS stack to every build for code this library never runs.

use super::candidate::{check_characters, relative_segments, strip_base};
use super::{project_key, DiskUsage, Location, PathCheck, StorageBackend};
use crate::error::{QuotaError, Result};
use crate::ids::{ProjectId, UserId};

pub struct ObjectStoreBackend {
  bucket: String,
  /// Without leading or trailing slashes; may be empty.
  prefix: String,
}

impl ObjectStoreBackend {
  pub fn new(bucket: String, prefix: String) -> Result<Self> {
    let bucket = parse_bucket(&bucket)?;
    let prefix = parse_prefix(&prefix)?;
    Ok(ObjectStoreBackend { bucket, prefix })
  }

  /// `s3://bucket/prefix/` (or `s3://bucket/` without a prefix).
  fn base_url(&self) -> String {
    if self.prefix.is_empty() {
      format!("s3://{}/", self.bucket)
    } else {
      format!("s3://{}/{}/", self.bucket, self.prefix)
    }
  }
}

/// An S3 bucket name by AWS's rules for general-purpose buckets: 3 to 63 lower-case letters,
/// digits, dots and hyphens, starting and ending with a letter or digit, no `..`, not an IPv4
/// address, none of the reserved prefixes and suffixes.
pub fn parse_bucket(raw: &str) -> Result<String> {
  let bytes = raw.as_bytes();
  let chars_ok = bytes
    .iter()
    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-');
  let ends_ok = bytes
    .first()
    .zip(bytes.last())
    .is_some_and(|(a, z)| a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric());
  let is_ip = raw.parse::<std::net::Ipv4Addr>().is_ok();
  let reserved = ["xn--", "sthree-", "amzn-s3-demo-"]
    .iter()
    .any(|p| raw.starts_with(p))
    || ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"]
      .iter()
      .any(|s| raw.ends_with(s));
  if !(3..=63).contains(&raw.len())
    || !chars_ok
    || !ends_ok
    || raw.contains("..")
    || is_ip
    || reserved
  {
    return Err(QuotaError::invalid(format!(
      "storage.bucket {raw:?} is not a valid S3 bucket name (3-63 lower-case letters, digits, '.' and '-', starting and ending with a letter or digit)"
    )));
  }
  Ok(raw.to_owned())
}

/// A key prefix: segments of ASCII letters, digits, `.`, `_` and `-` separated by `/`, at most
/// 512 bytes; leading and trailing slashes are dropped. `.`, `..` and empty segments are refused.
pub fn parse_prefix(raw: &str) -> Result<String> {
  let trimmed = raw.trim_matches('/');
  if trimmed.is_empty() {
    return Ok(String::new());
  }
  let segment_ok = |s: &str| {
    !s.is_empty()
      && s.len() <= 255
      && s != "."
      && s != ".."
      && s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
  };
  if trimmed.len() > 512 || !trimmed.split('/').all(segment_ok) {
    return Err(QuotaError::invalid(format!(
      "storage.prefix {raw:?} must be '/'-separated segments of ASCII letters, digits, '.', '_' and '-' (no '.' or '..' segments, at most 512 bytes)"
    )));
  }
  Ok(trimmed.to_owned())
}

impl StorageBackend for ObjectStoreBackend {
  fn name(&self) -> &'static str {
    "s3"
  }

  fn locate(&self, user: &UserId, project: &ProjectId) -> Result<Location> {
    let key = project_key(user, project);
    // The key is two id segments by construction; checked again as for local paths.
    let parts: Vec<&str> = key.split('/').collect();
    if parts != [user.as_str(), &project.to_string(), ""] {
      return Err(QuotaError::invalid(format!(
        "user {user} and project {project} do not make a key of two segments"
      )));
    }
    Ok(Location {
      backend: self.name(),
      path: format!("{}{key}", self.base_url()),
      key,
    })
  }

  fn prepare(&self, _user: &UserId, _project: &ProjectId) -> Result<()> {
    Ok(())
  }

  fn check_path(&self, user: &UserId, project: &ProjectId, candidate: &str) -> Result<PathCheck> {
    let location = self.locate(user, project)?;
    if let Err(reason) = check_characters(candidate) {
      return Ok(PathCheck::refused(reason));
    }
    let relative = match candidate.strip_prefix("s3://") {
      Some(rest) => {
        let project_name = project.to_string();
        let base: Vec<&str> = std::iter::once(self.bucket.as_str())
          .chain(self.prefix.split('/').filter(|s| !s.is_empty()))
          .chain([user.as_str(), project_name.as_str()])
          .collect();
        match strip_base(rest, &base) {
          Ok(rest) => rest,
          Err(reason) => return Ok(PathCheck::refused(reason)),
        }
      }
      // A local absolute path names no object of this bucket.
      None if candidate.starts_with('/') => {
        return Ok(PathCheck::refused(
          "an absolute local path is not inside an object-store project; pass a key relative to the project or its s3:// URL",
        ))
      }
      None => candidate.to_owned(),
    };
    match relative_segments(&relative) {
      Ok(segments) => {
        let relative_path = segments.join("/");
        Ok(PathCheck {
          inside: true,
          path: Some(format!("{}{relative_path}", location.path)),
          relative_path: Some(relative_path),
          reason: None,
        })
      }
      Err(reason) => Ok(PathCheck::refused(reason)),
    }
  }

  fn usage(&self, _user: &UserId, _project: &ProjectId) -> Result<DiskUsage> {
    Err(QuotaError::Storage(
      "diskUsage counts files on the local disk; with the s3 backend the project's objects are in the bucket (use the recorded usage, or list the prefix with your S3 client)".into(),
    ))
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn ids() -> (UserId, ProjectId) {
    (
      UserId::parse("user_2NNEqL2nrIRdJ194ndJqAHwEfxC").unwrap(),
      ProjectId::parse("3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b").unwrap(),
    )
  }

  #[test]
  fn locates_projects_under_bucket_and_prefix() {
    let (user, project) = ids();
    let backend = ObjectStoreBackend::new("my-bucket".into(), "/tenants/prod/".into()).unwrap();
    let location = backend.locate(&user, &project).unwrap();
    assert_eq!(location.backend, "s3");
    assert_eq!(
      location.path,
      "s3://my-bucket/tenants/prod/user_2NNEqL2nrIRdJ194ndJqAHwEfxC/3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b/"
    );
    let bare = ObjectStoreBackend::new("my-bucket".into(), String::new()).unwrap();
    assert!(bare
      .locate(&user, &project)
      .unwrap()
      .path
      .starts_with("s3://my-bucket/user_"));
  }

  #[test]
  fn refuses_bad_buckets_and_prefixes() {
    for bad in [
      "",
      "ab",
      "My-Bucket",
      "-abc",
      "abc-",
      "a..b",
      "192.168.0.1",
      "xn--abc",
      "a_b",
      "a/b",
    ] {
      assert!(parse_bucket(bad).is_err(), "accepted bucket {bad:?}");
    }
    for bad in ["a/../b", "a//b", "./a", "a b", "a\\b", "a%2fb", "ä"] {
      assert!(parse_prefix(bad).is_err(), "accepted prefix {bad:?}");
    }
    assert_eq!(parse_prefix("/a/b/").unwrap(), "a/b");
  }

  #[test]
  fn checks_candidates_as_keys() {
    let (user, project) = ids();
    let backend = ObjectStoreBackend::new("my-bucket".into(), "p".into()).unwrap();
    let base = backend.locate(&user, &project).unwrap().path;
    let inside = backend.check_path(&user, &project, "a/b.txt").unwrap();
    assert_eq!(inside.path.unwrap(), format!("{base}a/b.txt"));
    let absolute = backend
      .check_path(&user, &project, &format!("{base}x/../y"))
      .unwrap();
    assert_eq!(absolute.relative_path.unwrap(), "y");
    assert!(!backend.check_path(&user, &project, "../x").unwrap().inside);
    assert!(
      !backend
        .check_path(&user, &project, "s3://other/p/x")
        .unwrap()
        .inside
    );
  }
}
