//! The one place a library error becomes a JS error.

use napi::bindgen_prelude::*;

use crate::error::QuotaError;

/// Every error crosses into JS as a JSON payload (`code`, `message` and the numbers behind it)
/// in the message; the JS layer (`lib/errors.js`) decodes it once into a `StorageQuotaError`.
/// napi-rs keeps only its own status as `code` on async rejections, so the code travels here.
pub(crate) fn to_js_error(error: QuotaError) -> napi::Error {
  napi::Error::new(Status::GenericFailure, error.to_payload().to_string())
}
