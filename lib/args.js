'use strict'

// Argument validation for every call, in plain JS: the same rules as the Zod schemas of
// lib/schemas.js (which the package still exports, loaded on first use), without loading Zod,
// which alone adds ~12 MB to a process. Each validator has Zod's `safeParse` shape, so
// `parse()` and `fromZod()` in lib/client.js and lib/errors.js treat both alike;
// __test__/args.test.mjs checks that both accept and refuse exactly the same values.

const MAX_BYTES = Number.MAX_SAFE_INTEGER
const MAX_TIMEOUT = 2 ** 31 - 1
const ID = /^[A-Za-z0-9][A-Za-z0-9_-]*$/
const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/
const IDENT = /^[A-Za-z_][A-Za-z0-9_$]{0,62}$/
const QUALIFIED = /^[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?$/

class Issue extends Error {
  constructor(path, message) {
    super(message)
    this.path = path
  }
}

function kind(value) {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'array'
  if (typeof value === 'number' && Number.isNaN(value)) return 'NaN'
  if (value === Infinity || value === -Infinity) return 'Infinity'
  if (typeof value === 'object') return value.constructor?.name ?? 'object'
  return typeof value
}

/** `field.check(value)` at `path` + `key`: the longer path is built only when it fails. */
function checkAt(field, value, path, key) {
  try {
    return field.check(value, NO_PATH)
  } catch (error) {
    if (error instanceof Issue) error.path = [...path, key, ...error.path]
    throw error
  }
}

const expected = (path, type, value) => new Issue(path, `Invalid input: expected ${type}, received ${kind(value)}`)

/** The path of a top-level argument; nested paths are built only for an Issue. */
const NO_PATH = Object.freeze([])

/**
 * A validator from `check(value, path)`, which returns the value to use or throws an Issue.
 * lib/client.js calls `check` itself (no result object per call); `safeParse` is Zod's shape.
 */
function validator(check) {
  return {
    check,
    safeParse(value) {
      try {
        return { success: true, data: check(value, NO_PATH) }
      } catch (error) {
        if (!(error instanceof Issue)) throw error
        return { success: false, error: { issues: [{ path: error.path, message: error.message }] } }
      }
    },
  }
}

function string({ min, max, regex, minMessage, maxMessage, regexMessage } = {}) {
  return validator((value, path) => {
    if (typeof value !== 'string') throw expected(path, 'string', value)
    if (min !== undefined && value.length < min) throw new Issue(path, minMessage ?? `Too small: expected string to have >=${min} characters`)
    if (max !== undefined && value.length > max) throw new Issue(path, maxMessage ?? `Too big: expected string to have <=${max} characters`)
    if (regex && !regex.test(value)) throw new Issue(path, regexMessage ?? 'Invalid string: must match pattern')
    return value
  })
}

function number({ int = false, min, max } = {}) {
  return validator((value, path) => {
    if (typeof value !== 'number' || !Number.isFinite(value)) throw expected(path, 'number', value)
    if (int && !Number.isInteger(value)) throw expected(path, 'int', value)
    if (min !== undefined && value < min) throw new Issue(path, `Too small: expected number to be >=${min}`)
    if (max !== undefined && value > max) throw new Issue(path, `Too big: expected number to be <=${max}`)
    if (int && !Number.isSafeInteger(value)) throw new Issue(path, `Too big: expected int to be <=${MAX_BYTES}`)
    return value
  })
}

const boolean = validator((value, path) => {
  if (typeof value !== 'boolean') throw expected(path, 'boolean', value)
  return value
})

function oneOf(values) {
  return validator((value, path) => {
    if (!values.includes(value)) throw new Issue(path, `Invalid option: expected one of ${values.map((v) => JSON.stringify(v)).join('|')}`)
    return value
  })
}

/** An object with only these keys, each optional; returns a fresh object read once. */
function options(shape) {
  const fields = Object.entries(shape)
  const v = validator((value, path) => {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) throw expected(path, 'object', value)
    for (const key of Object.keys(value)) {
      if (!Object.hasOwn(shape, key)) throw new Issue(path, `Unrecognized key: "${key}"`)
    }
    const out = {}
    for (const [key, field] of fields) {
      const given = value[key]
      if (given !== undefined) out[key] = checkAt(field, given, path, key)
      else if (key in value) out[key] = undefined // as Zod: a key given as undefined stays
    }
    return out
  })
  v.shape = shape
  return v
}

const UserIdSchema = string({
  min: 1,
  max: 128,
  regex: ID,
  minMessage: 'userId must not be empty',
  maxMessage: 'userId must be at most 128 characters',
  regexMessage: "userId may contain only ASCII letters, digits, '_' and '-', and must start with a letter or digit",
})
const ProjectIdSchema = string({
  min: 1,
  max: 128,
  regex: ID,
  minMessage: 'projectId must not be empty',
  maxMessage: 'projectId must be at most 128 characters',
  regexMessage: "projectId must be the project's id as text: a UUID, an integer, or ASCII letters, digits, '_' and '-' starting with a letter or digit",
})
const BytesSchema = validator((n, path) => {
  if (typeof n !== 'number' || !Number.isFinite(n)) throw expected(path, 'number', n)
  if (!Number.isInteger(n)) throw new Issue(path, `must be a whole number of bytes, got ${n}`)
  if (n < 0) throw new Issue(path, `must not be negative, got ${n}`)
  if (n > MAX_BYTES) throw new Issue(path, `must be at most ${MAX_BYTES} (2^53 − 1, the largest whole number a JS number holds exactly), got ${n}`)
  return n
})
const UploadIdSchema = string({ min: 1, max: 200, regex: /^[\x21-\x7e]+$/, regexMessage: 'uploadId must be printable ASCII without spaces' })
const BytesListSchema = validator((value, path) => {
  if (!Array.isArray(value)) throw expected(path, 'array', value)
  const out = []
  for (let i = 0; i < value.length; i++) out.push(checkAt(BytesSchema, value[i], path, i))
  if (out.length < 1) throw new Issue(path, 'give at least one size')
  if (out.length > 10_000) throw new Issue(path, 'Too big: expected array to have <=10000 items')
  return out
})
const ReservationIdSchema = string({
  regex: UUID,
  regexMessage: 'reservationId must be a UUID such as 3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b',
})
const TtlMsSchema = number({ int: true, min: 1000, max: 7 * 24 * 60 * 60 * 1000 })
const AuditTextSchema = string({ max: 500, regex: /^[^\0]*$/, regexMessage: 'must not contain NUL' })
const ModeSchema = oneOf(['enforce', 'shadow', 'off'])

const RecordUploadOptionsSchema = options({ uploadId: UploadIdSchema, replacesBytes: BytesSchema })
const FileNameSchema = string({ min: 1, max: 4096, minMessage: 'fileName must not be empty' })
const reserveShape = options({ ttlMs: TtlMsSchema, reservationId: ReservationIdSchema, presign: boolean, fileName: FileNameSchema })
const ReserveUploadOptionsSchema = validator((value, path) => {
  const out = reserveShape.check(value, path)
  if (out.presign && out.fileName === undefined) throw new Issue([...path, 'fileName'], 'presign needs fileName')
  if (!out.presign && out.fileName !== undefined) throw new Issue([...path, 'fileName'], 'fileName applies with presign: true')
  return out
})
ReserveUploadOptionsSchema.shape = reserveShape.shape
const MoveProjectOptionsSchema = validator((value, path) => {
  const out = options({ to: oneOf(['local', 's3']) }).check(value, path)
  if (out.to === undefined) throw new Issue([...path, 'to'], 'Invalid option: expected one of "local"|"s3"')
  return out
})
MoveProjectOptionsSchema.shape = { to: null }
const DeleteProjectFileOptionsSchema = options({ deletionId: UploadIdSchema })
const RecordDeletionOptionsSchema = options({ uploadId: UploadIdSchema, deletionId: UploadIdSchema })
const RegisterProjectOptionsSchema = options({ sizeBytes: BytesSchema })
const RemoveProjectOptionsSchema = options({ deleteFiles: boolean })
const SetQuotaLimitOptionsSchema = options({ changedBy: AuditTextSchema, reason: AuditTextSchema })
const GetUsageOptionsSchema = options({ projects: boolean })
const ReconcileOptionsSchema = options({ fix: boolean, disk: boolean })
const StepsSchema = number({ int: true, min: 1, max: 1000 })
const RollbackOptionsSchema = options({ discardUsage: boolean })
const BackfillOptionsSchema = options({
  batchSize: number({ int: true, min: 1, max: 100_000 }),
  onProgress: validator((value, path) => {
    if (typeof value !== 'function') throw new Issue(path, 'must be a function')
    return value
  }),
  signal: validator((value, path) => {
    if (!(value instanceof AbortSignal)) throw new Issue(path, 'must be an AbortSignal')
    return value
  }),
})
const CandidatePathSchema = string({ min: 1, minMessage: 'the path to check must not be empty' })

const StorageOptionsSchema = validator((value, path) => {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw expected(path, 'object', value)
  const backend = value.backend
  if (backend === 'local') return options({ backend: oneOf(['local']) }).check(value, path)
  if (backend === 's3') {
    const out = options({
      backend: oneOf(['s3']),
      bucket: string({ min: 3, max: 63, minMessage: 'bucket must be 3 to 63 characters', maxMessage: 'bucket must be 3 to 63 characters' }),
      prefix: string({ max: 514 }),
      endpoint: validator((v, p) => {
        if (typeof v !== 'string') throw expected(p, 'string', v)
        try {
          new URL(v)
        } catch {
          throw new Issue(p, 'Invalid URL')
        }
        return v
      }),
      region: string({ min: 1, max: 256 }),
      accessKeyId: string({ min: 1, max: 256 }),
      secretAccessKey: string({ min: 1, max: 256 }),
      sessionToken: string({ min: 1, max: 256 }),
    }).check(value, path)
    if (out.bucket === undefined) throw expected([...path, 'bucket'], 'string', undefined)
    return out
  }
  throw new Issue([...path, 'backend'], 'Invalid input')
})

const ProjectsOptionSchema = validator((value, path) => {
  if (value === 'standalone') return value
  const out = options({
    table: string({ regex: QUALIFIED, regexMessage: 'projects.table must be a plain SQL identifier or schema.table' }),
    id: string({ regex: IDENT, regexMessage: 'projects.id must be a plain SQL identifier' }),
    owner: string({ regex: IDENT, regexMessage: 'projects.owner must be a plain SQL identifier' }),
  }).check(value, path)
  if (out.table === undefined) throw expected([...path, 'table'], 'string', undefined)
  return out
})

const LoggerSchema = validator((value, path) => {
  if (typeof value === 'function' || value === false) return value
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) return value
  throw new Issue(path, 'logger must be a function, an object with info/warn, or false')
})

const ClientOptionsSchema = options({
  databaseUrl: string(),
  storageRoot: string({ min: 1 }),
  defaultQuotaBytes: BytesSchema,
  poolSize: number({ int: true, min: 1, max: 1000 }),
  minConnections: number({ int: true, min: 0, max: 1000 }),
  idleTimeoutMs: number({ int: true, min: 0, max: MAX_TIMEOUT }),
  maxLifetimeMs: number({ int: true, min: 0, max: MAX_TIMEOUT }),
  statementCache: boolean,
  connectTimeoutMs: number({ int: true, min: 1, max: MAX_TIMEOUT }),
  statementTimeoutMs: number({ int: true, min: 0, max: MAX_TIMEOUT }),
  applicationName: string({ max: 63 }),
  mode: ModeSchema,
  rolloutPercent: number({ int: true, min: 0, max: 100 }),
  reservationTtlMs: TtlMsSchema,
  historyRetentionDays: number({ int: true, min: 1, max: 36_500 }),
  logger: LoggerSchema,
  logLevel: oneOf(['warn', 'info']),
  slowCallMs: number({ min: 0 }),
  storage: StorageOptionsSchema,
  projects: ProjectsOptionSchema,
})

module.exports = {
  Issue,
  NO_PATH,
  UserIdSchema,
  ProjectIdSchema,
  BytesSchema,
  UploadIdSchema,
  BytesListSchema,
  ReservationIdSchema,
  RecordUploadOptionsSchema,
  ReserveUploadOptionsSchema,
  RecordDeletionOptionsSchema,
  FileNameSchema,
  MoveProjectOptionsSchema,
  DeleteProjectFileOptionsSchema,
  RegisterProjectOptionsSchema,
  RemoveProjectOptionsSchema,
  SetQuotaLimitOptionsSchema,
  GetUsageOptionsSchema,
  ReconcileOptionsSchema,
  StepsSchema,
  RollbackOptionsSchema,
  BackfillOptionsSchema,
  ModeSchema,
  StorageOptionsSchema,
  ProjectsOptionSchema,
  ClientOptionsSchema,
  CandidatePathSchema,
}
