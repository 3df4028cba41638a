'use strict'

/**
 * Every failure of storage-quota is a StorageQuotaError with a stable `code`. A refusal for
 * lack of room is a QuotaExceededError (code 'QUOTA_EXCEEDED') carrying the numbers.
 */
class StorageQuotaError extends Error {
  constructor(code, message, details = {}) {
    super(message)
    this.name = 'StorageQuotaError'
    this.code = code
    const { causes, ...fields } = details
    for (const [key, value] of Object.entries(fields)) {
      if (key !== 'code' && key !== 'message') this[key] = value
    }
    // A database error's driver error and its sources, as a standard `cause` chain.
    if (Array.isArray(causes) && causes.length > 0) {
      this.cause = causes.reduceRight((inner, text) => new Error(text, inner ? { cause: inner } : undefined), undefined)
    }
  }
}

class QuotaExceededError extends StorageQuotaError {
  constructor(message, details) {
    super('QUOTA_EXCEEDED', message, details)
    this.name = 'QuotaExceededError'
  }
}

/** Every code the addon gives its errors (src/error.rs, `QuotaError::code`). */
const CODES = new Set([
  'INVALID_ARGUMENT', 'QUOTA_EXCEEDED', 'NOT_FOUND', 'FORBIDDEN', 'CONFLICT', 'RESERVATION_EXPIRED',
  'MIGRATION_REQUIRED', 'MIGRATION_FAILED', 'DB_UNAVAILABLE', 'DB_TIMEOUT', 'DB_ERROR', 'STORAGE_ERROR',
  'UNSAFE_PATH', 'CLIENT_CLOSED', 'INTERNAL',
])

/**
 * The addon rejects (and throws) with an Error it built on the JS thread, carrying `code` and the
 * numbers behind it as its own properties (src/napi/error.rs). Turn it into a StorageQuotaError
 * (or QuotaExceededError) with the same fields, here, once.
 */
function fromNative(error) {
  if (error instanceof StorageQuotaError) return error
  if (error instanceof Error && typeof error.code === 'string' && CODES.has(error.code)) {
    const { code, ...details } = error
    return code === 'QUOTA_EXCEEDED'
      ? new QuotaExceededError(error.message, details)
      : new StorageQuotaError(code, error.message, details)
  }
  const text = error && typeof error.message === 'string' ? error.message : ''
  // napi's own argument conversion ("Failed to convert JavaScript value ..."): InvalidArg,
  // StringExpected, NumberExpected, ObjectExpected, …
  if (error && typeof error.code === 'string' && (error.code === 'InvalidArg' || error.code.endsWith('Expected'))) {
    return new StorageQuotaError('INVALID_ARGUMENT', text)
  }
  const wrapped = new StorageQuotaError('INTERNAL', text || String(error))
  wrapped.cause = error
  return wrapped
}

/** What a thrown value says, without calling anything on it that could throw again. */
function describeThrown(value) {
  try {
    if (value instanceof Error) return `${value.name}: ${value.message}`
    return typeof value
  } catch {
    return 'an unreadable value'
  }
}

/** A ZodError as INVALID_ARGUMENT, naming the argument and what was wrong with it. */
function fromZod(zodError, what) {
  // The path starts with the argument's name (`bytes`, `options.uploadId`), never empty.
  const issues = zodError.issues.map((issue) => ({
    path: [what, ...issue.path].join('.'),
    message: issue.message,
  }))
  const summary = issues
    .map((issue) => (issue.path === what ? issue.message : `${issue.path.slice(what.length + 1)}: ${issue.message}`))
    .join('; ')
  return new StorageQuotaError('INVALID_ARGUMENT', `invalid ${what}: ${summary}`, { issues })
}

module.exports = { StorageQuotaError, QuotaExceededError, describeThrown, fromNative, fromZod }
