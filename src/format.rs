//! Human-readable byte counts. One convention everywhere: binary multiples (1 KB = 1024 bytes,
//! 1 GB = 1024³ bytes), labelled KB/MB/GB/TB as most file managers do, so the default quota of
//! 1,073,741,824 bytes reads "1 GB". The JS `formatBytes` helper follows the same rules.

const UNITS: [&str; 6] = ["B", "KB", "MB", "GB", "TB", "PB"];

/// `512 B`, `12.5 MB`, `1 GB`: one decimal, dropped when it is zero.
pub fn format_bytes(bytes: i64) -> String {
  if bytes < 0 {
    return format!("-{}", format_bytes(bytes.saturating_neg()));
  }
  let mut value = bytes as f64;
  let mut unit = 0;
  while value >= 1024.0 && unit < UNITS.len() - 1 {
    value /= 1024.0;
    unit += 1;
  }
  if unit == 0 {
    return format!("{bytes} B");
  }
  let rounded = (value * 10.0).round() / 10.0;
  if rounded >= 1024.0 && unit < UNITS.len() - 1 {
    // 1023.96 MB rounds to 1024.0 MB: say 1 GB instead.
    return format!("1 {}", UNITS[unit + 1]);
  }
  if rounded.fract() == 0.0 {
    format!("{} {}", rounded as i64, UNITS[unit])
  } else {
    format!("{rounded:.1} {}", UNITS[unit])
  }
}

/// Share of the limit in use, in percent with two decimals. A zero limit is 100 % full.
pub fn percent_used(used_bytes: i64, limit_bytes: i64) -> f64 {
  if limit_bytes <= 0 {
    return 100.0;
  }
  ((used_bytes as f64 / limit_bytes as f64) * 10_000.0).round() / 100.0
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn formats_binary_units() {
    assert_eq!(format_bytes(0), "0 B");
    assert_eq!(format_bytes(1023), "1023 B");
    assert_eq!(format_bytes(1024), "1 KB");
    assert_eq!(format_bytes(1536), "1.5 KB");
    assert_eq!(format_bytes(13_107_200), "12.5 MB");
    assert_eq!(format_bytes(1_073_741_824), "1 GB");
    assert_eq!(format_bytes(1024 * 1024 * 1024 - 1), "1 GB");
    assert_eq!(format_bytes(327_155_712), "312 MB");
  }

  #[test]
  fn percent_has_two_decimals() {
    assert_eq!(percent_used(1, 3), 33.33);
    assert_eq!(percent_used(0, 1_073_741_824), 0.0);
    assert_eq!(percent_used(2, 1), 200.0);
    assert_eq!(percent_used(0, 0), 100.0);
  }
}
