//! Lexical checks of a candidate path inside a project (`validatePath`). Strict on purpose: the
//! candidate usually comes from a user (an upload's file name, an archive entry), and whatever
//! a later layer might decode into a dot or a separator — percent escapes, Unicode look-alikes,
//! backslashes, Windows drive letters, trailing dots — is refused rather than interpreted.

/// Longest candidate accepted, in bytes (Linux `PATH_MAX`).
pub const MAX_CANDIDATE_LEN: usize = 4096;
/// Longest single segment, in bytes (Linux `NAME_MAX`).
pub const MAX_SEGMENT_LEN: usize = 255;

/// Characters that render as, or are folded by some normalizer into, a slash, a backslash or a
/// dot. A name holding one is refused so no later NFKC step or UI can turn it into traversal.
const LOOK_ALIKES: &[char] = &[
  '\u{2215}', // DIVISION SLASH
  '\u{2044}', // FRACTION SLASH
  '\u{FF0F}', // FULLWIDTH SOLIDUS
  '\u{29F8}', // BIG SOLIDUS
  '\u{2571}', // BOX DRAWINGS LIGHT DIAGONAL UPPER RIGHT TO LOWER LEFT
  '\u{FE68}', // SMALL REVERSE SOLIDUS
  '\u{FF3C}', // FULLWIDTH REVERSE SOLIDUS
  '\u{2216}', // SET MINUS
  '\u{29F5}', // REVERSE SOLIDUS OPERATOR
  '\u{29F9}', // BIG REVERSE SOLIDUS
  '\u{FF0E}', // FULLWIDTH FULL STOP
  '\u{FE52}', // SMALL FULL STOP
  '\u{2024}', // ONE DOT LEADER
  '\u{2025}', // TWO DOT LEADER
  '\u{2026}', // HORIZONTAL ELLIPSIS
  '\u{FF61}', // HALFWIDTH IDEOGRAPHIC FULL STOP
  '\u{0337}', // COMBINING SHORT SOLIDUS OVERLAY
  '\u{0338}', // COMBINING LONG SOLIDUS OVERLAY
];

/// Percent escapes that decode to a dot, a separator, a NUL or another escape (double
/// encoding), or start an overlong UTF-8 form of one (`%c0%ae`, `%e0%80%ae`).
const ENCODED: &[&str] = &["%2e", "%2f", "%5c", "%25", "%00", "%c0", "%c1", "%e0%80"];

/// Refuses what must never appear anywhere in a candidate. `Err` holds the reason.
pub fn check_characters(candidate: &str) -> Result<(), String> {
  if candidate.len() > MAX_CANDIDATE_LEN {
    return Err(format!("the path is longer than {MAX_CANDIDATE_LEN} bytes"));
  }
  if candidate.chars().any(char::is_control) {
    return Err("the path contains a control character (such as NUL)".into());
  }
  if candidate.contains('\\') {
    return Err("the path contains a backslash, a separator on Windows".into());
  }
  if let Some(c) = candidate.chars().find(|c| LOOK_ALIKES.contains(c)) {
    return Err(format!(
      "the path contains U+{:04X}, a look-alike of a dot or a separator",
      c as u32
    ));
  }
  let lower = candidate.to_ascii_lowercase();
  if let Some(escape) = ENCODED.iter().find(|e| lower.contains(*e)) {
    return Err(format!(
      "the path contains the percent escape {escape}, which decodes to a dot, a separator or another escape"
    ));
  }
  Ok(())
}

/// The segments of a path relative to the project directory after resolving `.` and `..`
/// lexically. `Err` when it leaves the directory or a segment is unsafe.
pub fn relative_segments(relative: &str) -> Result<Vec<&str>, String> {
  let bytes = relative.as_bytes();
  if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
    return Err("the path starts with a Windows drive letter".into());
  }
  let mut segments: Vec<&str> = Vec::new();
  for segment in relative.split('/') {
    match segment {
      "" | "." => {}
      ".." => {
        if segments.pop().is_none() {
          return Err("the path leaves the project directory".into());
        }
      }
      _ => {
        check_segment(segment)?;
        segments.push(segment);
      }
    }
  }
  Ok(segments)
}

/// A file's path inside a project as the library takes it (presigned uploads, moves): already
/// normal — relative, no `.`, `..` or empty segment, nothing `validatePath` would refuse.
pub fn file_name(raw: &str) -> crate::error::Result<String> {
  let refused = |reason: String| {
    crate::error::QuotaError::invalid(format!("file name {raw:?} is refused: {reason}"))
  };
  check_characters(raw).map_err(refused)?;
  let segments = relative_segments(raw).map_err(refused)?;
  let joined = segments.join("/");
  if joined.is_empty() || joined != raw {
    return Err(refused(
      "give a relative path without '.', '..', empty segments or a leading slash".into(),
    ));
  }
  Ok(joined)
}

fn check_segment(segment: &str) -> Result<(), String> {
  if segment.len() > MAX_SEGMENT_LEN {
    return Err(format!(
      "a path segment is longer than {MAX_SEGMENT_LEN} bytes"
    ));
  }
  // Windows strips trailing dots and spaces, so `.. ` or `..\u{20}.` would become `..` there.
  if segment.ends_with('.') || segment.ends_with(' ') {
    return Err(format!(
      "the segment {segment:?} ends with a dot or a space"
    ));
  }
  Ok(())
}

/// For an absolute candidate: what follows `base` (the project's own absolute segments), or
/// `Err` when the candidate is not under it. No `..` is resolved before the project directory:
/// `/root/user/other/../project` is refused, not reinterpreted.
pub fn strip_base<'a>(absolute: &'a str, base: &[&str]) -> Result<String, String> {
  let mut parts = absolute.split('/').filter(|s| !s.is_empty() && *s != ".");
  for expected in base {
    if parts.next() != Some(*expected) {
      return Err("the path is outside the project directory".into());
    }
  }
  Ok(parts.collect::<Vec<&'a str>>().join("/"))
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn file_names_must_already_be_normal() {
    assert_eq!(
      file_name("renders/frame 01.png").unwrap(),
      "renders/frame 01.png"
    );
    for bad in [
      "", "/a", "a/", "a//b", "./a", "a/./b", "a/../b", "../a", "a\\b", "%2e%2e/a", "a\u{0}b",
      "C:a",
    ] {
      assert_eq!(
        file_name(bad).unwrap_err().code(),
        "INVALID_ARGUMENT",
        "{bad:?}"
      );
    }
  }

  #[test]
  fn resolves_dots_inside_and_refuses_leaving() {
    assert_eq!(relative_segments("a/./b//c").unwrap(), ["a", "b", "c"]);
    assert_eq!(relative_segments("a/../b").unwrap(), ["b"]);
    assert!(relative_segments("").unwrap().is_empty());
    assert!(relative_segments("a/../..").is_err());
    assert!(relative_segments("../x").is_err());
    assert!(relative_segments("C:x").is_err());
    assert!(relative_segments("a/.. ").is_err());
    assert!(relative_segments("a/...").is_err());
  }

  #[test]
  fn refuses_encoded_and_look_alike_forms() {
    for bad in [
      "%2e%2e/x",
      "%252e%252e/x",
      "a%2fb",
      "%c0%ae%c0%ae/x",
      "a\u{2215}b",
      "\u{FF0E}\u{FF0E}/x",
      "a\\b",
      "a\0b",
      "a\nb",
    ] {
      assert!(check_characters(bad).is_err(), "accepted {bad:?}");
    }
    assert!(check_characters("reports/2024 Q1 (final).pdf").is_ok());
    assert!(check_characters("données/café.txt").is_ok());
  }

  #[test]
  fn strips_only_an_exact_base() {
    let base = ["srv", "u", "p"];
    assert_eq!(strip_base("/srv/u/p/a/b", &base).unwrap(), "a/b");
    assert_eq!(strip_base("/srv/u/p", &base).unwrap(), "");
    assert_eq!(strip_base("//srv/./u/p/", &base).unwrap(), "");
    assert!(strip_base("/srv/u/px/a", &base).is_err());
    assert!(strip_base("/srv/u/q/../p/a", &base).is_err());
    assert!(strip_base("/srv", &base).is_err());
  }
}
