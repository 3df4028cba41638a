//! The object-store backend: a project is the key prefix `{prefix}/{userId}/{projectId}/` in an
//! S3-compatible bucket, shown as `s3://{bucket}/{prefix}/{userId}/{projectId}/`. Object stores
//! have no directories, so allocation only records the prefix: nothing is written and no
//! request is made. Naming and checking keys is here; the requests (`object_store` crate) are
//! in `io.rs`.

mod io;

use std::sync::Arc;

use ::object_store::aws::{AmazonS3, AmazonS3Builder};
use ::object_store::path::Path as ObjectPath;

use super::candidate::{check_characters, relative_segments, strip_base};
use super::{project_key, Location, PathCheck, RawS3Options, S3Config, Secret};
use crate::error::{QuotaError, Result};
use crate::ids::{ProjectId, UserId};

pub struct ObjectStoreBackend {
  bucket: String,
  /// Without leading or trailing slashes; may be empty.
  prefix: String,
  store: Arc<AmazonS3>,
}

impl ObjectStoreBackend {
  /// Builds the client: credentials, region and endpoint from `config`, the rest from the
  /// usual AWS environment variables. No request is made.
  pub fn new(config: &S3Config) -> Result<Self> {
    let bucket = parse_bucket(&config.bucket)?;
    let prefix = parse_prefix(&config.prefix)?;
    // reqwest's rustls takes the process-wide provider: ring, like the database's TLS. An
    // error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket);
    let env_endpoint = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
      .iter()
      .find_map(|name| std::env::var(name).ok());
    if let Some(endpoint) = config.endpoint.as_ref().or(env_endpoint.as_ref()) {
      builder = builder
        .with_endpoint(endpoint)
        .with_allow_http(endpoint.starts_with("http://"))
        .with_virtual_hosted_style_request(false);
    }
    if let Some(region) = &config.region {
      builder = builder.with_region(region);
    }
    if let Some(key) = &config.access_key_id {
      builder = builder.with_access_key_id(key);
    }
    if let Some(Secret(secret)) = &config.secret_access_key {
      builder = builder.with_secret_access_key(secret);
    }
    if let Some(Secret(token)) = &config.session_token {
      builder = builder.with_token(token);
    }
    // A quota call must not hang for most of a minute on a failing store: a few quick retries
    // (the crate's default is 10 within 3 minutes), then STORAGE_ERROR.
    builder = builder.with_retry(::object_store::RetryConfig {
      max_retries: 3,
      retry_timeout: std::time::Duration::from_secs(20),
      ..Default::default()
    });
    // The builder's errors name settings, never their values.
    let store = builder
      .build()
      .map_err(|e| QuotaError::invalid(format!("storage: cannot configure the s3 client: {e}")))?;
    Ok(ObjectStoreBackend {
      bucket,
      prefix,
      store: Arc::new(store),
    })
  }

  /// `{prefix}/{userId}/{projectId}/` inside the bucket.
  fn project_prefix(&self, user: &UserId, project: &ProjectId) -> String {
    let key = project_key(user, project);
    if self.prefix.is_empty() {
      key
    } else {
      format!("{}/{key}", self.prefix)
    }
  }

  fn project_path(&self, user: &UserId, project: &ProjectId) -> Result<ObjectPath> {
    object_path(&self.project_prefix(user, project))
  }

  /// The object key of `file` (a normalised relative path) in the project.
  fn file_path(&self, user: &UserId, project: &ProjectId, file: &str) -> Result<ObjectPath> {
    let file = super::candidate::file_name(file)?;
    object_path(&format!("{}{file}", self.project_prefix(user, project)))
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

fn object_path(key: &str) -> Result<ObjectPath> {
  ObjectPath::parse(key.trim_end_matches('/'))
    .map_err(|e| QuotaError::invalid(format!("{key:?} is not a usable object key: {e}")))
}

/// The `storage` option of the s3 backend, validated. The endpoint must be an `http(s)` URL
/// without credentials, path or query.
pub fn parse_s3(raw: RawS3Options) -> Result<S3Config> {
  let bucket = raw
    .bucket
    .ok_or_else(|| QuotaError::invalid("storage.bucket is required for the s3 backend"))?;
  let endpoint = raw.endpoint.map(|e| parse_endpoint(&e)).transpose()?;
  let text = |name: &str, value: Option<String>| -> Result<Option<String>> {
    match value {
      Some(v) if v.is_empty() || v.len() > 256 || !v.bytes().all(|b| b.is_ascii_graphic()) => {
        Err(QuotaError::invalid(format!(
          "storage.{name} must be 1 to 256 printable ASCII characters"
        )))
      }
      other => Ok(other),
    }
  };
  let secret = |name: &str, value: Option<Secret>| -> Result<Option<Secret>> {
    Ok(text(name, value.map(|s| s.0))?.map(Secret))
  };
  Ok(S3Config {
    bucket: parse_bucket(&bucket)?,
    prefix: parse_prefix(raw.prefix.as_deref().unwrap_or(""))?,
    endpoint,
    region: text("region", raw.region)?,
    access_key_id: text("accessKeyId", raw.access_key_id)?,
    secret_access_key: secret("secretAccessKey", raw.secret_access_key)?,
    session_token: secret("sessionToken", raw.session_token)?,
  })
}

fn parse_endpoint(raw: &str) -> Result<String> {
  let bad = || {
    QuotaError::invalid(format!(
      "storage.endpoint must be http(s)://host[:port] without user, path or query, got {raw:?}"
    ))
  };
  let url = url::Url::parse(raw).map_err(|_| bad())?;
  if !matches!(url.scheme(), "http" | "https")
    || url.host_str().is_none()
    || !url.username().is_empty()
    || url.password().is_some()
    || url.path() != "/"
    || url.query().is_some()
    || url.fragment().is_some()
  {
    return Err(bad());
  }
  Ok(raw.trim_end_matches('/').to_owned())
}

impl ObjectStoreBackend {
  fn locate_key(&self, user: &UserId, project: &ProjectId) -> Result<Location> {
    let key = project_key(user, project);
    // The key is two id segments by construction; checked again as for local paths.
    let parts: Vec<&str> = key.split('/').collect();
    if parts != [user.as_str(), &project.to_string(), ""] {
      return Err(QuotaError::invalid(format!(
        "user {user} and project {project} do not make a key of two segments"
      )));
    }
    Ok(Location {
      backend: "s3",
      path: format!("{}{key}", self.base_url()),
      key,
    })
  }

  fn check_key(&self, user: &UserId, project: &ProjectId, candidate: &str) -> Result<PathCheck> {
    let location = self.locate_key(user, project)?;
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
}

#[cfg(test)]
mod tests {
  use super::*;

  fn make_backend(prefix: &str) -> ObjectStoreBackend {
    ObjectStoreBackend::new(&S3Config {
      bucket: "my-bucket".into(),
      prefix: parse_prefix(prefix).unwrap(),
      region: Some("us-east-1".into()),
      ..Default::default()
    })
    .unwrap()
  }

  #[test]
  fn endpoints_are_bare_origins() {
    assert_eq!(
      parse_endpoint("http://127.0.0.1:9000/").unwrap(),
      "http://127.0.0.1:9000"
    );
    for bad in [
      "ftp://x",
      "http://u:p@host",
      "http://host/path",
      "http://host?x=1",
      "host:9000",
    ] {
      assert!(parse_endpoint(bad).is_err(), "accepted {bad:?}");
    }
  }

  #[test]
  fn secrets_never_show_in_debug() {
    let config = S3Config {
      secret_access_key: Some(Secret("wJalrXUtnFEMI".into())),
      ..Default::default()
    };
    assert!(!format!("{config:?}").contains("wJalr"));
  }

  fn ids() -> (UserId, ProjectId) {
    (
      UserId::parse("user_2NNEqL2nrIRdJ194ndJqAHwEfxC").unwrap(),
      ProjectId::parse("3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b").unwrap(),
    )
  }

  #[test]
  fn locates_projects_under_bucket_and_prefix() {
    let (user, project) = ids();
    let backend = make_backend("/tenants/prod/");
    let location = backend.locate_key(&user, &project).unwrap();
    assert_eq!(location.backend, "s3");
    assert_eq!(
      location.path,
      "s3://my-bucket/tenants/prod/user_2NNEqL2nrIRdJ194ndJqAHwEfxC/3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b/"
    );
    let bare = make_backend("");
    assert!(bare
      .locate_key(&user, &project)
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
    let backend = make_backend("p");
    let base = backend.locate_key(&user, &project).unwrap().path;
    let inside = backend.check_key(&user, &project, "a/b.txt").unwrap();
    assert_eq!(inside.path.unwrap(), format!("{base}a/b.txt"));
    let absolute = backend
      .check_key(&user, &project, &format!("{base}x/../y"))
      .unwrap();
    assert_eq!(absolute.relative_path.unwrap(), "y");
    assert!(!backend.check_key(&user, &project, "../x").unwrap().inside);
    assert!(
      !backend
        .check_key(&user, &project, "s3://other/p/x")
        .unwrap()
        .inside
    );
  }
}
