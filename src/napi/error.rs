//! The one place a library error becomes a JS error.

use napi::bindgen_prelude::*;
use napi::sys;

use crate::error::QuotaError;

/// A library error as a JS `Error` with `code`, `reason`, the numbers and the database details as
/// its own properties, built on the JS thread. The returned `napi::Error` holds a reference to
/// that object, and napi throws or rejects with the object itself.
pub(crate) fn js_error(env: &Env, error: QuotaError) -> napi::Error {
  match build_error(env, &error) {
    Ok(object) => napi::Error::from(object.to_unknown()),
    // Only when the environment cannot create objects (tearing down): a plain error.
    Err(_) => napi::Error::new(Status::GenericFailure, error.to_string()),
  }
}

pub(super) fn build_error<'env>(env: &'env Env, error: &QuotaError) -> Result<Object<'env>> {
  let mut object = env.create_error(napi::Error::new(Status::GenericFailure, error.to_string()))?;
  if let serde_json::Value::Object(fields) = error.to_payload() {
    for (name, value) in fields {
      if name != "message" {
        object.set_named_property(&name, env.to_js_value(&value)?)?;
      }
    }
  }
  Ok(object)
}

/// What an async call answers: its value, or a library error that becomes a real JS `Error`
/// with `code`, `reason`, the numbers and the database details as properties. The error object
/// is built here, on the JS thread, when the promise settles, and handed to napi as the
/// rejection value itself (an `Error` holding a reference to it is rejected verbatim), so its
/// properties survive the async rejection; nothing is serialised on the way.
pub struct Answer<T>(pub std::result::Result<T, QuotaError>);

/// Runs an async call's work and wraps its outcome, so the work itself uses `?` on library errors.
/// The call counts as busy while it runs (`idle`: the allocator is trimmed when none is).
pub(crate) async fn answer<T>(
  work: impl std::future::Future<Output = std::result::Result<T, QuotaError>>,
) -> Result<Answer<T>> {
  let _busy = super::idle::Busy::enter();
  Ok(Answer(work.await))
}

impl<T: ToNapiValue> ToNapiValue for Answer<T> {
  unsafe fn to_napi_value(raw_env: sys::napi_env, answer: Self) -> Result<sys::napi_value> {
    match answer.0 {
      Ok(value) => unsafe { T::to_napi_value(raw_env, value) },
      Err(error) => {
        let env = Env::from_raw(raw_env);
        let object = build_error(&env, &error)?;
        Err(napi::Error::from(object.to_unknown()))
      }
    }
  }
}

impl<T: TypeName> TypeName for Answer<T> {
  fn type_name() -> &'static str {
    T::type_name()
  }

  fn value_type() -> ValueType {
    T::value_type()
  }
}

/// What a batched async call answers: one entry per call, in order, each its value or a real JS
/// `Error` built as `Answer` builds it (on the JS thread, when the promise settles). The promise
/// itself never rejects for one call's error.
pub struct Answers<T>(pub Vec<std::result::Result<T, QuotaError>>);

impl<T: ToNapiValue> ToNapiValue for Answers<T> {
  unsafe fn to_napi_value(raw_env: sys::napi_env, answers: Self) -> Result<sys::napi_value> {
    let env = Env::from_raw(raw_env);
    let mut array = env.create_array(answers.0.len() as u32)?;
    for (i, answer) in answers.0.into_iter().enumerate() {
      let value = match answer {
        Ok(value) => unsafe { T::to_napi_value(raw_env, value)? },
        Err(error) => build_error(&env, &error)?.raw(),
      };
      array.set(i as u32, unsafe {
        Unknown::from_raw_unchecked(raw_env, value)
      })?;
    }
    unsafe { Array::to_napi_value(raw_env, array) }
  }
}

impl<T> TypeName for Answers<T> {
  fn type_name() -> &'static str {
    "Array"
  }

  fn value_type() -> ValueType {
    ValueType::Object
  }
}
