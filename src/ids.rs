//! Ids that come from users, checked against strict allow-lists before they reach SQL or a
//! path. A valid id is a single safe path segment by construction: no dots, no separators,
//! nothing that any filesystem or URL decoder treats specially.

use std::fmt;

use crate::error::{QuotaError, Result};

/// Longest accepted user id. Clerk ids are 32 characters; 128 leaves room for other providers.
pub const MAX_USER_ID_LEN: usize = 128;

/// A user id such as Clerk's `user_2NNEqL2nrIRdJ194ndJqAHwEfxC`: ASCII letters, digits, `_` and
/// `-`, 1 to 128 characters, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);

impl UserId {
  pub fn parse(raw: &str) -> Result<Self> {
    if raw.is_empty() {
      return Err(QuotaError::invalid("userId must not be empty"));
    }
    if raw.len() > MAX_USER_ID_LEN {
      return Err(QuotaError::invalid(format!(
        "userId is {} characters long; at most {MAX_USER_ID_LEN} are accepted",
        raw.len()
      )));
    }
    let first_ok = raw.as_bytes()[0].is_ascii_alphanumeric();
    let rest_ok = raw
      .bytes()
      .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !first_ok || !rest_ok {
      return Err(QuotaError::invalid(
        "userId may contain only ASCII letters, digits, '_' and '-', and must start with a letter or digit",
      ));
    }
    Ok(UserId(raw.to_owned()))
  }

  pub fn as_str(&self) -> &str {
    &self.0
  }
}

/// Longest accepted project id, as for user ids.
pub const MAX_PROJECT_ID_LEN: usize = 128;

/// A project id as the app's table has it, in text: a UUID, an integer, or a text id made of
/// ASCII letters, digits, `_` and `-` (1 to 128 characters, starting with a letter or digit) —
/// the same allow-list as user ids, so an id is one safe path segment whatever its type.
/// UUID-shaped ids are lower-cased (PostgreSQL prints uuids that way), so one project has one
/// spelling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProjectId(String);

impl ProjectId {
  pub fn parse(raw: &str) -> Result<Self> {
    let safe = !raw.is_empty()
      && raw.len() <= MAX_PROJECT_ID_LEN
      && raw.as_bytes()[0].is_ascii_alphanumeric()
      && raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !safe {
      return Err(QuotaError::invalid(format!(
        "projectId must be the project's id as text: a UUID, an integer, or 1 to {MAX_PROJECT_ID_LEN} ASCII letters, digits, '_' and '-' starting with a letter or digit"
      )));
    }
    if is_uuid_shaped(raw) {
      return Ok(ProjectId(raw.to_ascii_lowercase()));
    }
    Ok(ProjectId(raw.to_owned()))
  }

  pub fn as_str(&self) -> &str {
    &self.0
  }
}

/// 36 characters, hyphens at 8, 13, 18 and 23, hex digits elsewhere.
fn is_uuid_shaped(raw: &str) -> bool {
  raw.len() == 36
    && raw.bytes().enumerate().all(|(i, b)| match i {
      8 | 13 | 18 | 23 => b == b'-',
      _ => b.is_ascii_hexdigit(),
    })
}

/// A UUID the package generated (reservation ids), in its hyphenated form only.
pub fn parse_uuid(name: &str, raw: &str) -> Result<uuid::Uuid> {
  if !is_uuid_shaped(raw) {
    return Err(QuotaError::invalid(format!(
      "{name} must be a UUID such as 3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b, got {:?}",
      raw.chars().take(64).collect::<String>()
    )));
  }
  uuid::Uuid::parse_str(raw).map_err(|_| QuotaError::invalid(format!("{name} must be a UUID")))
}

impl fmt::Display for ProjectId {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_str(&self.0)
  }
}

impl fmt::Display for UserId {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_str(&self.0)
  }
}

/// An idempotency key for an upload: printable ASCII without spaces, 1 to 200 characters.
pub fn parse_upload_id(raw: &str) -> Result<String> {
  if raw.is_empty() || raw.len() > 200 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
    return Err(QuotaError::invalid(
      "uploadId must be 1 to 200 printable ASCII characters without spaces",
    ));
  }
  Ok(raw.to_owned())
}

/// The caller's idempotency key, validated, or a fresh UUID when there is none.
pub fn upload_key_or_new(raw: Option<&str>) -> Result<String> {
  match raw {
    Some(raw) => parse_upload_id(raw),
    None => Ok(uuid::Uuid::new_v4().to_string()),
  }
}

/// Largest byte count accepted anywhere: 2^53 − 1, the largest integer a JS number holds exactly.
pub const MAX_BYTES: i64 = 9_007_199_254_740_991;

/// A byte count from JS: a finite, non-negative whole number no larger than 2^53 − 1.
pub fn parse_bytes(name: &str, value: f64) -> Result<i64> {
  if !value.is_finite() || value.fract() != 0.0 || !(0.0..=MAX_BYTES as f64).contains(&value) {
    return Err(QuotaError::invalid(format!(
      "{name} must be a whole number of bytes from 0 to {MAX_BYTES}, got {value}"
    )));
  }
  Ok(value as i64)
}

/// A whole number from `min` to `max`; anything else (NaN, 1.5, -1, 1e12) is INVALID_ARGUMENT.
pub fn parse_whole(name: &str, value: f64, min: u32, max: u32) -> Result<u32> {
  if value.is_finite() && value.fract() == 0.0 && value >= min.into() && value <= max.into() {
    Ok(value as u32)
  } else {
    Err(QuotaError::invalid(format!(
      "{name} must be a whole number from {min} to {max}, got {value}"
    )))
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn accepts_clerk_ids() {
    assert!(UserId::parse("user_2NNEqL2nrIRdJ194ndJqAHwEfxC").is_ok());
    assert!(UserId::parse("a").is_ok());
    assert!(UserId::parse(&"a".repeat(128)).is_ok());
  }

  #[test]
  fn refuses_anything_path_like() {
    for bad in [
      "",
      ".",
      "..",
      "../x",
      "a/b",
      "a\\b",
      "a\0b",
      "%2e%2e",
      "_x",
      "-x",
      "a b",
      "a.b",
      "ｕser",
      "user\u{2215}x",
      "C:",
      "/etc",
    ] {
      assert!(UserId::parse(bad).is_err(), "accepted {bad:?}");
    }
    assert!(UserId::parse(&"a".repeat(129)).is_err());
  }

  /// The shared corpus of traversal attempts (also run through the addon by
  /// `__test__/traversal.test.mjs`): every one is refused as a
  /// user id, and every one and the UUID-shaped extras as a project id.
  #[test]
  fn refuses_the_traversal_corpus() {
    let corpus: serde_json::Value =
      serde_json::from_str(include_str!("../__test__/fixtures/traversal.json")).unwrap();
    let ids = corpus["ids"].as_array().unwrap();
    let projects = corpus["projectIds"].as_array().unwrap();
    assert!(ids.len() >= 50);
    for raw in ids.iter().map(|v| v.as_str().unwrap()) {
      assert!(UserId::parse(raw).is_err(), "accepted user id {raw:?}");
    }
    for raw in ids.iter().chain(projects).map(|v| v.as_str().unwrap()) {
      assert!(
        ProjectId::parse(raw).is_err(),
        "accepted project id {raw:?}"
      );
    }
  }

  #[test]
  fn project_ids_are_one_safe_segment_with_one_spelling() {
    let id = ProjectId::parse("3F2B8C1E-6A0D-4C7E-9B5A-2D1E0F9C8A7B").unwrap();
    assert_eq!(id.to_string(), "3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b");
    assert_eq!(ProjectId::parse("42").unwrap().as_str(), "42");
    assert_eq!(
      ProjectId::parse("9223372036854775807").unwrap().as_str(),
      "9223372036854775807"
    );
    assert_eq!(ProjectId::parse("inv_Abc-1").unwrap().as_str(), "inv_Abc-1");
    for bad in [
      "",
      "{3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b}",
      "3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7/",
      "../../etc/passwd/aaaaaaaaaaaaaaaaaaaa",
      "-1",
      "_x",
      "a.b",
    ] {
      assert!(ProjectId::parse(bad).is_err(), "accepted {bad:?}");
    }
    assert!(ProjectId::parse(&"a".repeat(129)).is_err());
    assert!(parse_uuid("reservationId", "not-a-uuid")
      .unwrap_err()
      .to_string()
      .contains("reservationId"));
  }

  #[test]
  fn bytes_must_be_safe_whole_numbers() {
    assert_eq!(parse_bytes("bytes", 0.0).unwrap(), 0);
    assert_eq!(
      parse_bytes("bytes", 9_007_199_254_740_991.0).unwrap(),
      MAX_BYTES
    );
    for bad in [-1.0, 0.5, f64::NAN, f64::INFINITY, 9_007_199_254_740_992.0] {
      assert!(parse_bytes("bytes", bad).is_err(), "accepted {bad}");
    }
  }
}
