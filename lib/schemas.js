'use strict'

// Zod schemas for every argument and result, exported so server actions and forms can reuse
// them. They mirror the Rust validators in src/ids.rs exactly; the Rust side checks again.
const { z } = require('zod')

const MAX_BYTES = Number.MAX_SAFE_INTEGER

/** Clerk-style user ids: ASCII letters, digits, `_`, `-`; 1–128 chars; starts with a letter or digit. */
const UserIdSchema = z
  .string()
  .min(1, 'userId must not be empty')
  .max(128, 'userId must be at most 128 characters')
  .regex(/^[A-Za-z0-9][A-Za-z0-9_-]*$/, "userId may contain only ASCII letters, digits, '_' and '-', and must start with a letter or digit")

/**
 * Project ids, as the app's table has them in text: a UUID, an integer, or a text id of ASCII
 * letters, digits, `_` and `-` (1–128 characters, starting with a letter or digit).
 */
const ProjectIdSchema = z
  .string()
  .min(1, 'projectId must not be empty')
  .max(128, 'projectId must be at most 128 characters')
  .regex(/^[A-Za-z0-9][A-Za-z0-9_-]*$/, "projectId must be the project's id as text: a UUID, an integer, or ASCII letters, digits, '_' and '-' starting with a letter or digit")

/** A whole number of bytes from 0 to 2^53 − 1. One message per value, saying what is wrong with it. */
const BytesSchema = z.number().check((ctx) => {
  const n = ctx.value
  const problem = !Number.isFinite(n)
    ? `must be a finite number of bytes, got ${n}`
    : !Number.isInteger(n)
      ? `must be a whole number of bytes, got ${n}`
      : n < 0
        ? `must not be negative, got ${n}`
        : n > MAX_BYTES
          ? `must be at most ${MAX_BYTES} (2^53 − 1, the largest whole number a JS number holds exactly), got ${n}`
          : null
  if (problem) ctx.issues.push({ code: 'custom', message: problem, input: n })
})

const UploadIdSchema = z
  .string()
  .min(1)
  .max(200)
  .regex(/^[\x21-\x7e]+$/, 'uploadId must be printable ASCII without spaces')

/** Sizes of a multi-file upload: 1 to 10,000 byte counts. */
const BytesListSchema = z.array(BytesSchema).min(1, 'give at least one size').max(10_000)

/** Reservation ids: a UUID in the 36-character hyphenated form (any case). */
const ReservationIdSchema = z
  .string()
  .regex(/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/, 'reservationId must be a UUID such as 3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b')

const RecordUploadOptionsSchema = z.strictObject({
  uploadId: UploadIdSchema.optional(),
  /** The upload overwrites content of this many bytes: only the difference is charged. */
  replacesBytes: BytesSchema.optional(),
})

const TtlMsSchema = z.number().int().min(1000).max(7 * 24 * 60 * 60 * 1000)
/** A file's path inside a project, already normal: `renders/a.png`, no `.`/`..`/leading `/`. */
const FileNameSchema = z.string().min(1, 'fileName must not be empty').max(4096)
const ReserveUploadOptionsSchema = z
  .strictObject({
    ttlMs: TtlMsSchema.optional(),
    /** A UUID chosen by the caller: retrying with it after a lost reply holds the bytes once. */
    reservationId: ReservationIdSchema.optional(),
    /** s3 backend: answer with `uploadUrl`, a presigned PUT of `fileName` expiring with the reservation. */
    presign: z.boolean().optional(),
    /** The file the presigned URL writes, relative to the project. Required with `presign`. */
    fileName: FileNameSchema.optional(),
  })
  .refine((o) => !o.presign || o.fileName !== undefined, { message: 'presign needs fileName', path: ['fileName'] })
  .refine((o) => o.presign || o.fileName === undefined, { message: 'fileName applies with presign: true', path: ['fileName'] })
const MoveProjectOptionsSchema = z.strictObject({ to: z.enum(['local', 's3']) })
const DeleteProjectFileOptionsSchema = z.strictObject({ deletionId: UploadIdSchema.optional() })
const RecordDeletionOptionsSchema = z.strictObject({
  uploadId: UploadIdSchema.optional(),
  deletionId: UploadIdSchema.optional(),
})
const RegisterProjectOptionsSchema = z.strictObject({ sizeBytes: BytesSchema.optional() })
const RemoveProjectOptionsSchema = z.strictObject({ deleteFiles: z.boolean().optional() })
const AuditTextSchema = z.string().max(500).regex(/^[^\0]*$/, 'must not contain NUL')
const SetQuotaLimitOptionsSchema = z.strictObject({
  changedBy: AuditTextSchema.optional(),
  reason: AuditTextSchema.optional(),
})
const GetUsageOptionsSchema = z.strictObject({ projects: z.boolean().optional() })
const ReconcileOptionsSchema = z.strictObject({ fix: z.boolean().optional(), disk: z.boolean().optional() })
const StepsSchema = z.number().int().min(1).max(1000)
const RollbackOptionsSchema = z.strictObject({ discardUsage: z.boolean().optional() })
const BackfillOptionsSchema = z.strictObject({
  batchSize: z.number().int().min(1).max(100_000).optional(),
  onProgress: z.custom((v) => typeof v === 'function', 'must be a function').optional(),
  signal: z.custom((v) => v instanceof AbortSignal, 'must be an AbortSignal').optional(),
})
const ModeSchema = z.enum(['enforce', 'shadow', 'off'])

/**
 * Where project paths point: directories under `storageRoot` (`local`, the default), or keys
 * under `s3://{bucket}/{prefix}/` (`s3`). The Rust side checks bucket and prefix in full.
 */
const StorageOptionsSchema = z.discriminatedUnion('backend', [
  z.strictObject({ backend: z.literal('local') }),
  z.strictObject({
    backend: z.literal('s3'),
    bucket: z.string().min(3, 'bucket must be 3 to 63 characters').max(63, 'bucket must be 3 to 63 characters'),
    prefix: z.string().max(514).optional(),
    /** `http(s)://host:port` of an S3-compatible store (path-style). Default `AWS_ENDPOINT_URL`, else AWS. */
    endpoint: z.string().url().optional(),
    /** Default `AWS_REGION`. */
    region: z.string().min(1).max(256).optional(),
    /** Default `AWS_ACCESS_KEY_ID`. */
    accessKeyId: z.string().min(1).max(256).optional(),
    /** Default `AWS_SECRET_ACCESS_KEY`. Never logged. */
    secretAccessKey: z.string().min(1).max(256).optional(),
    /** Default `AWS_SESSION_TOKEN`. Never logged. */
    sessionToken: z.string().min(1).max(256).optional(),
  }),
])

/** A table or column name as written unquoted in SQL (`schema.table` for the table). */
const identifier = (what, qualified) =>
  z
    .string()
    .regex(
      qualified ? /^[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?$/ : /^[A-Za-z_][A-Za-z0-9_$]{0,62}$/,
      `projects.${what} must be a plain SQL identifier${qualified ? ' or schema.table' : ''}`,
    )

/**
 * Where the app's projects are: `'standalone'` (the package keeps its own registry, filled by
 * `registerProject`), or the app's table with its id and owner columns.
 */
const ProjectsOptionSchema = z.union([
  z.literal('standalone'),
  z.strictObject({
    table: identifier('table', true),
    id: identifier('id', false).optional(),
    owner: identifier('owner', false).optional(),
  }),
])

const ClientOptionsSchema = z.strictObject({
  databaseUrl: z.string().optional(),
  storageRoot: z.string().min(1).optional(),
  defaultQuotaBytes: BytesSchema.optional(),
  poolSize: z.number().int().min(1).max(1000).optional(),
  minConnections: z.number().int().min(0).max(1000).optional(),
  idleTimeoutMs: z.number().int().min(0).max(2 ** 31 - 1).optional(),
  maxLifetimeMs: z.number().int().min(0).max(2 ** 31 - 1).optional(),
  statementCache: z.boolean().optional(),
  connectTimeoutMs: z.number().int().min(1).max(2 ** 31 - 1).optional(),
  statementTimeoutMs: z.number().int().min(0).max(2 ** 31 - 1).optional(),
  applicationName: z.string().max(63).optional(),
  mode: ModeSchema.optional(),
  rolloutPercent: z.number().int().min(0).max(100).optional(),
  reservationTtlMs: TtlMsSchema.optional(),
  historyRetentionDays: z.number().int().min(1).max(36_500).optional(),
  /** `(event, fields) => void`, an object with `info`/`warn`, or `false` for silence. */
  logger: z.union([z.custom((v) => typeof v === 'function', 'logger must be a function'), z.literal(false), z.looseObject({})]).optional(),
  /** The default stderr logger's threshold: `warn` (default) or `info`. */
  logLevel: z.enum(['warn', 'info']).optional(),
  /** Calls slower than this are logged as `slow_call`. Default 250. */
  slowCallMs: z.number().min(0).optional(),
  storage: StorageOptionsSchema.optional(),
  projects: ProjectsOptionSchema.optional(),
})

/** A path to check with `validatePath`: relative to the project directory, or absolute. */
const CandidatePathSchema = z.string().min(1, 'the path to check must not be empty')

const usageShape = {
  usedBytes: BytesSchema,
  reservedBytes: BytesSchema,
  limitBytes: BytesSchema,
  remainingBytes: BytesSchema,
  percentUsed: z.number().min(0),
}

const QuotaCheckSchema = z.object({
  allowed: z.boolean(),
  wouldRefuse: z.boolean(),
  requestedBytes: BytesSchema,
  missingBytes: BytesSchema,
  fits: z.array(z.boolean()),
  mode: ModeSchema,
  ...usageShape,
})

const RecordedUploadSchema = z.object({
  uploadId: UploadIdSchema,
  bytes: BytesSchema,
  duplicate: z.boolean(),
  counted: z.boolean(),
  wouldRefuse: z.boolean(),
  replacedBytes: BytesSchema,
  netBytes: z.number().int(),
  mode: ModeSchema,
  ...usageShape,
})

const ReservationSchema = z.object({
  reservationId: ReservationIdSchema,
  userId: UserIdSchema,
  projectId: ProjectIdSchema,
  bytes: BytesSchema,
  expiresAt: z.date(),
  duplicate: z.boolean(),
  wouldRefuse: z.boolean(),
  mode: ModeSchema,
  uploadUrl: z.string().optional(),
  fileName: z.string().optional(),
  objectPath: z.string().optional(),
  ...usageShape,
})

const ReservationStatusSchema = z.enum(['committed', 'cancelled', 'expired'])

const SettledReservationSchema = z.object({
  reservationId: ReservationIdSchema,
  userId: UserIdSchema,
  projectId: ProjectIdSchema,
  status: ReservationStatusSchema,
  heldBytes: BytesSchema,
  committedBytes: BytesSchema,
  duplicate: z.boolean(),
  wouldRefuse: z.boolean(),
  mode: ModeSchema,
  ...usageShape,
})

/** The answer of `pruneHistory`. */
const PrunedHistorySchema = z.object({ reservations: z.number().int().min(0), ledgerEntries: z.number().int().min(0) })

const ReleasedSchema = z.object({
  releasedBytes: BytesSchema,
  duplicate: z.boolean(),
  cancelledReservations: z.number().int().min(0),
  ...usageShape,
})

const QuotaStateSchema = z.enum(['normal', 'nearing', 'critical', 'exceeded'])

const UsageSchema = z.object({
  userId: UserIdSchema,
  ...usageShape,
  state: QuotaStateSchema,
  usedText: z.string(),
  limitText: z.string(),
  remainingText: z.string(),
  summary: z.string(),
  projects: z.array(z.object({ projectId: ProjectIdSchema, usedBytes: z.number().int(), usedText: z.string() })).optional(),
})

const StorageBackendSchema = z.enum(['local', 's3'])

/** The answer of `projectPathFor`. */
const ProjectLocationSchema = z.object({ backend: StorageBackendSchema, key: z.string(), path: z.string() })

/** The answer of `validatePath`. */
const PathCheckSchema = z.discriminatedUnion('inside', [
  z.object({ inside: z.literal(true), path: z.string(), relativePath: z.string() }),
  z.object({ inside: z.literal(false), reason: z.string() }),
])

/** The answer of `diskUsage`. */
const DiskUsageSchema = z.object({
  bytes: BytesSchema,
  allocatedBytes: BytesSchema,
  files: BytesSchema,
  directories: BytesSchema,
  skipped: BytesSchema,
})

const ProjectStoragePathSchema = z.object({
  id: z.string(),
  projectId: ProjectIdSchema,
  userId: UserIdSchema,
  backend: StorageBackendSchema,
  key: z.string(),
  path: z.string(),
  createdAt: z.date(),
})

const ProjectFileSchema = z.object({ path: z.string(), bytes: BytesSchema })

const MovedProjectSchema = z.object({
  path: ProjectStoragePathSchema,
  from: StorageBackendSchema,
  files: z.number().int().min(0),
  bytes: BytesSchema,
  copiedFiles: z.number().int().min(0),
  alreadyMoved: z.boolean(),
})

/** A row of `user_quotas`, in camelCase. */
const UserQuotaSchema = z.object({
  id: z.string(),
  userId: UserIdSchema,
  limitBytes: BytesSchema,
  usedBytes: BytesSchema,
  reservedBytes: BytesSchema,
  createdAt: z.date(),
  updatedAt: z.date(),
})

const SimulationJobStatusSchema = z.enum(['queued', 'running', 'succeeded', 'failed', 'cancelled'])

/** A row of `simulation_jobs` (phase 2), in camelCase. */
const SimulationJobSchema = z.object({
  id: z.string(),
  projectId: ProjectIdSchema,
  userId: UserIdSchema,
  status: SimulationJobStatusSchema,
  parameters: z.record(z.string(), z.unknown()),
  outputPath: z.string().nullable(),
  error: z.string().nullable(),
  createdAt: z.date(),
  updatedAt: z.date(),
  startedAt: z.date().nullable(),
  finishedAt: z.date().nullable(),
})

module.exports = {
  BytesListSchema,
  ReservationIdSchema,
  ReserveUploadOptionsSchema,
  FileNameSchema,
  MoveProjectOptionsSchema,
  MovedProjectSchema,
  ProjectFileSchema,
  DeleteProjectFileOptionsSchema,
  RecordDeletionOptionsSchema,
  RegisterProjectOptionsSchema,
  RemoveProjectOptionsSchema,
  SetQuotaLimitOptionsSchema,
  GetUsageOptionsSchema,
  ReconcileOptionsSchema,
  StepsSchema,
  RollbackOptionsSchema,
  BackfillOptionsSchema,
  ModeSchema,
  ReservationSchema,
  ReservationStatusSchema,
  SettledReservationSchema,
  ReleasedSchema,
  PrunedHistorySchema,
  QuotaStateSchema,
  UsageSchema,
  UserIdSchema,
  ProjectIdSchema,
  BytesSchema,
  UploadIdSchema,
  RecordUploadOptionsSchema,
  ClientOptionsSchema,
  ProjectsOptionSchema,
  StorageOptionsSchema,
  CandidatePathSchema,
  ProjectLocationSchema,
  PathCheckSchema,
  DiskUsageSchema,
  QuotaCheckSchema,
  RecordedUploadSchema,
  StorageBackendSchema,
  ProjectStoragePathSchema,
  UserQuotaSchema,
  SimulationJobStatusSchema,
  SimulationJobSchema,
}
