//! Rollout modes: `enforce` refuses what does not fit; `shadow` counts everything and only
//! reports what it would have refused; `off` neither refuses nor counts new bytes (deletions
//! still release). A rollout percentage enforces for a stable share of users, picked by a hash
//! of their id, and shadows the rest, so their usage is complete when they are enrolled.

use crate::error::{QuotaError, Result};
use crate::ids::UserId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
  Enforce,
  Shadow,
  Off,
}

impl Mode {
  pub fn parse(raw: &str) -> Result<Self> {
    match raw {
      "enforce" => Ok(Mode::Enforce),
      "shadow" => Ok(Mode::Shadow),
      "off" => Ok(Mode::Off),
      other => Err(QuotaError::invalid(format!(
        "mode must be 'enforce', 'shadow' or 'off', got {other:?}"
      ))),
    }
  }

  pub fn as_str(self) -> &'static str {
    match self {
      Mode::Enforce => "enforce",
      Mode::Shadow => "shadow",
      Mode::Off => "off",
    }
  }
}

#[derive(Debug, Clone, Copy)]
pub struct Rollout {
  pub mode: Mode,
  /// Share of users (0–100) for whom `mode` applies when it is `enforce`; the others shadow.
  pub percent: u32,
}

impl Rollout {
  /// The mode that applies to this user.
  pub fn mode_for(&self, user: &UserId) -> Mode {
    if self.mode != Mode::Enforce || self.percent >= 100 {
      return self.mode;
    }
    if bucket(user) < self.percent {
      Mode::Enforce
    } else {
      Mode::Shadow
    }
  }
}

/// A stable bucket 0–99 for a user id: FNV-1a 64 of its bytes. Part of the public contract
/// (raising the percentage only ever adds users), so it must never change.
pub fn bucket(user: &UserId) -> u32 {
  let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
  for byte in user.as_str().bytes() {
    hash ^= u64::from(byte);
    hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
  }
  (hash % 100) as u32
}

#[cfg(test)]
mod tests {
  use super::*;

  fn user(id: &str) -> UserId {
    UserId::parse(id).unwrap()
  }

  #[test]
  fn buckets_are_stable_and_spread() {
    assert_eq!(
      bucket(&user("user_2NNEqL2nrIRdJ194ndJqAHwEfxC")),
      bucket(&user("user_2NNEqL2nrIRdJ194ndJqAHwEfxC"))
    );
    let enrolled = (0..10_000)
      .filter(|i| bucket(&user(&format!("user_{i}"))) < 25)
      .count();
    assert!(
      (2_000..3_000).contains(&enrolled),
      "{enrolled} of 10000 in a 25 % rollout"
    );
  }

  #[test]
  fn raising_the_percentage_only_adds_users() {
    let users: Vec<UserId> = (0..2_000).map(|i| user(&format!("user_{i}"))).collect();
    let at = |percent| Rollout {
      mode: Mode::Enforce,
      percent,
    };
    for u in &users {
      if at(30).mode_for(u) == Mode::Enforce {
        assert_eq!(at(60).mode_for(u), Mode::Enforce);
      }
    }
    assert!(users.iter().all(|u| at(0).mode_for(u) == Mode::Shadow));
    assert!(users.iter().all(|u| at(100).mode_for(u) == Mode::Enforce));
    let off = Rollout {
      mode: Mode::Off,
      percent: 50,
    };
    assert!(users.iter().all(|u| off.mode_for(u) == Mode::Off));
  }
}
