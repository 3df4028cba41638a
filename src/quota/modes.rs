//! What a rollout mode does with new bytes — the one decision every call applies (README,
//! "Rollout modes", has the table of mode × operation):
//!
//! - `enforce` refuses exactly what does not fit, and counts what does;
//! - `shadow` counts everything and never refuses (the database guard is lifted for that
//!   statement only), reporting `wouldRefuse` where enforce would have refused;
//! - `off` neither counts nor refuses new bytes. Releases (deletions, cancels, removals) and
//!   bytes already held by a reservation are not new: they are handled the same in every mode.

use crate::rollout::Mode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
  /// Refuse the request (`QUOTA_EXCEEDED`); nothing is written.
  Refuse,
  /// Count the bytes.
  Count,
  /// Neither count nor refuse.
  Skip,
}

/// The decision for new bytes that `fits` (or not) in the user's remaining quota.
pub fn decide(mode: Mode, fits: bool) -> Decision {
  match mode {
    Mode::Enforce if fits => Decision::Count,
    Mode::Enforce => Decision::Refuse,
    Mode::Shadow => Decision::Count,
    Mode::Off => Decision::Skip,
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn the_table() {
    assert_eq!(decide(Mode::Enforce, true), Decision::Count);
    assert_eq!(decide(Mode::Enforce, false), Decision::Refuse);
    assert_eq!(decide(Mode::Shadow, true), Decision::Count);
    assert_eq!(decide(Mode::Shadow, false), Decision::Count);
    assert_eq!(decide(Mode::Off, true), Decision::Skip);
    assert_eq!(decide(Mode::Off, false), Decision::Skip);
  }
}
