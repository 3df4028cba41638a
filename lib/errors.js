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
    for (const [key, value] of Object.entries(details)) {
      if (key !== 'code' && key !== 'message') this[key] = value
    }
  }
}

class QuotaExceededError extends StorageQuotaError {
  constructor(message, details) {
    super('QUOTA_EXCEEDED', message, details)
    this.name = 'QuotaExceededError'
  }
}

const PAYLOAD_PREFIX = '{"code":'

/**
 * The addon sends `{ code, message, ...numbers }` as JSON in the message of its rejections
 * (napi-rs keeps only its own status as `code` on async errors). Decode it here, once.
 */
function fromNative(error) {
  if (error instanceof StorageQuotaError) return error
  const text = error && typeof error.message === 'string' ? error.message : ''
  if (text.startsWith(PAYLOAD_PREFIX)) {
    try {
      const { code, message, ...details } = JSON.parse(text)
      return code === 'QUOTA_EXCEEDED'
        ? new QuotaExceededError(message, details)
        : new StorageQuotaError(code, message, details)
    } catch {
      // fall through: not our payload after all
    }
  }
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
