//! Many answers handed to JS as numbers, not as objects: built through napi, each answer's
//! properties cost a call per value and a name interned per property, on the JS thread, for
//! every call (a `perf` profile at 16 callers put it beside the argument conversion as most of
//! that thread's work per hand-over). `lib/packed.js` builds the same objects from the numbers
//! with one object literal each. Only the calls handed over together take this path; a lone call
//! answers its object as before.
//!
//! Layout (`lib/packed.js` reads the same): per call, in order, 1 for an answer or 0 for an
//! error, then the kind's `STRIDE` numbers (zeros for an error) — then, after all of them, what
//! the kind adds per answered call (`trailing`). Beside the numbers, `texts` holds per call a
//! string JS cannot know (a generated upload id) or nothing, and `errors` each failed call's
//! `Error`. Byte counts are safe integers, so a double holds them exactly, as napi's own
//! conversion of an `i64` does.
//!
//! - `checkQuota` (`STRIDE` 10): `allowed`, `wouldRefuse` (1 or 0), `requestedBytes`,
//!   `missingBytes`, the mode (`MODES` index), then the usage (`usedBytes`, `reservedBytes`,
//!   `limitBytes`, `remainingBytes`, `percentUsed`); trailing: the `fits` of every answered call
//!   one after another (1 or 0), as many as that call's sizes.
//! - `recordUpload` (`STRIDE` 12): `bytes`, `duplicate`, `counted`, `wouldRefuse`,
//!   `replacedBytes`, `netBytes`, the mode, then the usage; texts: the upload id Rust generated
//!   for a call that gave none.

use napi::bindgen_prelude::*;
use napi::sys;

use super::error::build_error;
use crate::error::QuotaError;
use crate::quota::client::Uploaded;
use crate::quota::usage::{QuotaCheck, Usage};
use crate::rollout::Mode;

/// An answer that packs into numbers.
pub trait Pack {
  /// Numbers per call after the leading 1 or 0.
  const STRIDE: usize;
  /// This answer's `STRIDE` numbers.
  fn numbers(&self, out: &mut Vec<f64>);
  /// Numbers this answer adds after every call's stride.
  fn trailing(&self, _out: &mut Vec<f64>) {}
  /// A string JS cannot know from its arguments.
  fn text(&self) -> Option<&str> {
    None
  }
}

/// One entry per call: its answer, or its error. Becomes
/// `{ values: Float64Array, texts, errors }`: `texts` null when no answer has one, else one
/// entry per call (its string, or undefined); `errors` null when no call failed, else one entry
/// per call (its `Error`, or undefined).
pub struct Packed<T>(pub Vec<std::result::Result<T, QuotaError>>);

/// The mode's index in `lib/packed.js`'s `MODES`.
fn mode_index(mode: Mode) -> f64 {
  match mode {
    Mode::Enforce => 0.0,
    Mode::Shadow => 1.0,
    Mode::Off => 2.0,
  }
}

fn flag(value: bool) -> f64 {
  if value {
    1.0
  } else {
    0.0
  }
}

/// The mode, then the usage: the last six numbers of every kind's stride.
fn mode_and_usage(mode: Mode, usage: &Usage, out: &mut Vec<f64>) {
  out.extend_from_slice(&[
    mode_index(mode),
    usage.used_bytes as f64,
    usage.reserved_bytes as f64,
    usage.limit_bytes as f64,
    usage.remaining_bytes() as f64,
    usage.percent_used(),
  ]);
}

impl Pack for QuotaCheck {
  const STRIDE: usize = 10;

  fn numbers(&self, out: &mut Vec<f64>) {
    out.extend_from_slice(&[
      flag(self.allowed),
      flag(self.would_refuse),
      self.requested_bytes as f64,
      self.missing_bytes() as f64,
    ]);
    mode_and_usage(self.mode, &self.usage, out);
  }

  fn trailing(&self, out: &mut Vec<f64>) {
    out.extend(self.fits.iter().map(|&fits| flag(fits)));
  }
}

/// A `recordUpload` answer, with whether JS must be told its upload id: not the one the call
/// gave (none was given, so it was generated).
pub struct PackedUpload {
  pub uploaded: Uploaded,
  pub tell_id: bool,
}

impl Pack for PackedUpload {
  const STRIDE: usize = 12;

  fn numbers(&self, out: &mut Vec<f64>) {
    let u = &self.uploaded;
    out.extend_from_slice(&[
      u.bytes as f64,
      flag(u.duplicate),
      flag(u.counted),
      flag(u.would_refuse),
      u.replaced_bytes as f64,
      u.net_bytes as f64,
    ]);
    mode_and_usage(u.mode, &u.usage, out);
  }

  fn text(&self) -> Option<&str> {
    self.tell_id.then_some(self.uploaded.upload_id.as_str())
  }
}

impl<T: Pack> Packed<T> {
  /// The numbers of the layout above.
  fn values(&self) -> Vec<f64> {
    let mut values = Vec::with_capacity(self.0.len() * (T::STRIDE + 1));
    for answer in &self.0 {
      match answer {
        Ok(answer) => {
          values.push(1.0);
          answer.numbers(&mut values);
        }
        Err(_) => values.extend(std::iter::repeat_n(0.0, T::STRIDE + 1)),
      }
    }
    for answer in self.0.iter().flatten() {
      answer.trailing(&mut values);
    }
    values
  }
}

impl<T: Pack> ToNapiValue for Packed<T> {
  unsafe fn to_napi_value(raw_env: sys::napi_env, packed: Self) -> Result<sys::napi_value> {
    let env = Env::from_raw(raw_env);
    let mut object = Object::new(&env)?;
    object.set_named_property("values", Float64Array::new(packed.values()))?;
    let texts = packed
      .0
      .iter()
      .map(|answer| answer.as_ref().ok().and_then(Pack::text));
    if texts.clone().all(|text| text.is_none()) {
      object.set_named_property("texts", Null)?;
    } else {
      let mut array = env.create_array(packed.0.len() as u32)?;
      for (i, text) in texts.enumerate() {
        if let Some(text) = text {
          array.set(i as u32, text)?;
        }
      }
      object.set_named_property("texts", array)?;
    }
    if packed.0.iter().all(|answer| answer.is_ok()) {
      object.set_named_property("errors", Null)?;
    } else {
      let mut errors = env.create_array(packed.0.len() as u32)?;
      for (i, answer) in packed.0.iter().enumerate() {
        if let Err(error) = answer {
          errors.set(i as u32, build_error(&env, error)?)?;
        }
      }
      object.set_named_property("errors", errors)?;
    }
    unsafe { Object::to_napi_value(raw_env, object) }
  }
}

impl<T> TypeName for Packed<T> {
  fn type_name() -> &'static str {
    "Object"
  }

  fn value_type() -> ValueType {
    ValueType::Object
  }
}
