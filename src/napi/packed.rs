//! Many `checkQuota` answers handed to JS as numbers, not as objects: built through napi, each
//! answer's eleven properties cost a call per value and a name interned per property, on the
//! JS thread, for every call (a `perf` profile at 16 callers put it beside the argument
//! conversion as most of that thread's work per hand-over). `lib/packed.js` builds the same
//! objects from the numbers with one object literal each. Only the calls handed over together
//! take this path; a lone call answers its object as before.
//!
//! Layout (`lib/packed.js` reads the same): per call, in order, `STRIDE` numbers — 1 for an
//! answer or 0 for an error, then `allowed`, `wouldRefuse` (1 or 0), `requestedBytes`,
//! `missingBytes`, the mode (`MODES` index), `usedBytes`, `reservedBytes`, `limitBytes`,
//! `remainingBytes`, `percentUsed` — then, after all of them, the `fits` of every answered call
//! one after another (1 or 0), as many as that call's sizes. Byte counts are safe integers, so
//! a double holds them exactly, as napi's own conversion of an `i64` does.

use napi::bindgen_prelude::*;
use napi::sys;

use super::error::build_error;
use crate::error::QuotaError;
use crate::quota::usage::QuotaCheck;
use crate::rollout::Mode;

/// Numbers per call before the `fits` region.
const STRIDE: usize = 11;

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

/// One entry per call: its check, or its error. Becomes `{ values: Float64Array, errors }`,
/// `errors` being null when no call failed, else one entry per call (its `Error`, or undefined).
pub struct PackedChecks(pub Vec<std::result::Result<QuotaCheck, QuotaError>>);

impl PackedChecks {
  /// The numbers of the layout above.
  fn values(&self) -> Vec<f64> {
    let fits: usize = self.0.iter().flatten().map(|c| c.fits.len()).sum();
    let mut values = Vec::with_capacity(self.0.len() * STRIDE + fits);
    for answer in &self.0 {
      match answer {
        Ok(check) => {
          let usage = check.usage;
          values.extend_from_slice(&[
            1.0,
            flag(check.allowed),
            flag(check.would_refuse),
            check.requested_bytes as f64,
            check.missing_bytes() as f64,
            mode_index(check.mode),
            usage.used_bytes as f64,
            usage.reserved_bytes as f64,
            usage.limit_bytes as f64,
            usage.remaining_bytes() as f64,
            usage.percent_used(),
          ]);
        }
        Err(_) => values.extend_from_slice(&[0.0; STRIDE]),
      }
    }
    for check in self.0.iter().flatten() {
      values.extend(check.fits.iter().map(|&fits| flag(fits)));
    }
    values
  }
}

impl ToNapiValue for PackedChecks {
  unsafe fn to_napi_value(raw_env: sys::napi_env, packed: Self) -> Result<sys::napi_value> {
    let env = Env::from_raw(raw_env);
    let mut object = Object::new(&env)?;
    object.set_named_property("values", Float64Array::new(packed.values()))?;
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

impl TypeName for PackedChecks {
  fn type_name() -> &'static str {
    "Object"
  }

  fn value_type() -> ValueType {
    ValueType::Object
  }
}
