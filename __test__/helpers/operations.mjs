// Every exported function that takes arguments, and how to make valid arguments for it. The
// bad-input and security suites walk this table, so a new function is covered by adding a row
// (and, for a new kind of argument, an entry in KINDS).
import { z } from 'zod'
import * as quota from '../../index.js'
import * as S from '../../lib/schemas.js'

/** Whether Zod accepts `value`; a value whose reading throws (getter, Proxy) is not valid. */
function accepts(schema, value) {
  try {
    return schema.safeParse(value).success
  } catch {
    return false
  }
}
const options = (schema) => (v) => accepts(schema, v ?? {})
const optional = (schema) => (v) => v === undefined || v === null || accepts(schema, v)

/**
 * Kinds of argument: `valid(ctx)` makes a good one, `accepts(v)` says whether the layer under
 * test takes `v` as it is (the JS layer reads undefined and null options as "no options").
 * Valid values are chosen so that no call with one bad argument could write if it got through
 * validation by mistake without the database snapshot showing it.
 */
export const KINDS = {
  userId: { valid: (ctx) => ctx.userId, accepts: (v) => accepts(S.UserIdSchema, v) },
  projectId: { valid: (ctx) => ctx.projectId, accepts: (v) => accepts(S.ProjectIdSchema, v) },
  newProjectId: { valid: (ctx) => ctx.otherProjectId, accepts: (v) => accepts(S.ProjectIdSchema, v) },
  reservationId: { valid: () => '00000000-0000-4000-8000-00000000000a', accepts: (v) => accepts(S.ReservationIdSchema, v) },
  bytes: { valid: () => 1, accepts: (v) => accepts(S.BytesSchema, v) },
  bytesOrList: {
    valid: () => [1, 2],
    accepts: (v) => (Array.isArray(v) ? accepts(S.BytesListSchema, v) : accepts(S.BytesSchema, v)),
  },
  optionalBytes: { valid: () => 1, accepts: (v) => v === undefined || accepts(S.BytesSchema, v) },
  nullableBytes: { valid: () => 1, accepts: optional(S.BytesSchema) },
  uploadOptions: { valid: (ctx) => ({ uploadId: ctx.uploadId }), accepts: options(S.RecordUploadOptionsSchema) },
  reserveOptions: { valid: () => ({ ttlMs: 60_000 }), accepts: options(S.ReserveUploadOptionsSchema) },
  deletionOptions: { valid: () => ({ deletionId: 'fuzz-deletion' }), accepts: options(S.RecordDeletionOptionsSchema) },
  registerOptions: { valid: () => ({ sizeBytes: 1 }), accepts: options(S.RegisterProjectOptionsSchema) },
  removeOptions: { valid: () => ({ deleteFiles: false }), accepts: options(S.RemoveProjectOptionsSchema) },
  limitOptions: { valid: () => ({ changedBy: 'fuzz', reason: 'fuzz' }), accepts: options(S.SetQuotaLimitOptionsSchema) },
  usageOptions: { valid: () => ({ projects: true }), accepts: options(S.GetUsageOptionsSchema) },
  reconcileOptions: { valid: () => ({ fix: false }), accepts: options(S.ReconcileOptionsSchema) },
  // reconcile(userId?, options?) also takes the options first.
  reconcileTarget: {
    valid: (ctx) => ctx.userId,
    accepts: (v) =>
      v === undefined || v === null || accepts(S.UserIdSchema, v) || (typeof v === 'object' && accepts(S.ReconcileOptionsSchema, v)),
  },
  steps: { valid: () => 1, accepts: (v) => v === undefined || accepts(S.StepsSchema, v) },
  rollbackOptions: { valid: () => ({}), accepts: options(S.RollbackOptionsSchema) },
  backfillOptions: { valid: () => ({ batchSize: 1000 }), accepts: options(S.BackfillOptionsSchema) },
  clientOptions: { valid: (ctx) => ctx.clientOptions, accepts: options(S.ClientOptionsSchema) },
  // The raw binding's own argument kinds (no Zod there: napi converts, Rust validates).
  sizes: { valid: () => [1], accepts: (v) => accepts(S.BytesListSchema, v) },
  optionalTtl: { valid: () => 60_000, accepts: optional(S.ReserveUploadOptionsSchema.shape.ttlMs.unwrap()) },
  optionalUserId: { valid: (ctx) => ctx.userId, accepts: optional(S.UserIdSchema) },
  optionalReservationId: { valid: () => undefined, accepts: optional(S.ReservationIdSchema) },
  optionalUploadId: { valid: () => 'fuzz-deletion', accepts: optional(S.UploadIdSchema) },
  optionalAuditText: { valid: () => 'fuzz', accepts: optional(S.SetQuotaLimitOptionsSchema.shape.changedBy.unwrap()) },
  boolean: { valid: () => false, accepts: (v) => typeof v === 'boolean' },
  candidate: { valid: () => 'reports/q1.pdf', accepts: (v) => accepts(S.CandidatePathSchema, v) },
  // A local client moving a local project to local: a no-op that still runs every check.
  moveOptions: { valid: () => ({ to: 'local' }), accepts: options(S.MoveProjectOptionsSchema) },
  backendName: { valid: () => 'local', accepts: (v) => v === 'local' || v === 's3' },
  fileName: { valid: () => 'no-such-file.bin', accepts: (v) => accepts(S.FileNameSchema, v) },
  deleteFileOptions: { valid: () => ({ deletionId: 'fuzz-delete' }), accepts: options(S.DeleteProjectFileOptionsSchema) },
}

/**
 * Every async function of a client (the module-level functions have the same names and
 * arguments), with the kinds of its arguments in the JS API (`args`) and in the raw binding
 * (`native`: NativeClient takes options flattened). A new function is covered by a new row.
 */
export const OPERATIONS = [
  { name: 'checkQuota', args: ['userId', 'bytesOrList'], native: ['userId', 'sizes'] },
  { name: 'recordUpload', args: ['userId', 'projectId', 'bytes', 'uploadOptions'], native: ['userId', 'projectId', 'bytes', 'uploadOptions'] },
  { name: 'allocateProjectPath', args: ['userId', 'projectId'], native: ['userId', 'projectId'] },
  { name: 'reserveUpload', args: ['userId', 'projectId', 'bytes', 'reserveOptions'], native: ['userId', 'projectId', 'bytes', 'optionalTtl', 'optionalReservationId'] },
  { name: 'commitUpload', args: ['userId', 'reservationId', 'optionalBytes'], native: ['userId', 'reservationId', 'nullableBytes'] },
  { name: 'cancelUpload', args: ['userId', 'reservationId'], native: ['userId', 'reservationId'] },
  {
    name: 'recordDeletion',
    args: ['userId', 'projectId', 'nullableBytes', 'deletionOptions'],
    native: ['userId', 'projectId', 'nullableBytes', 'optionalUploadId', 'optionalUploadId'],
  },
  { name: 'registerProject', args: ['userId', 'newProjectId', 'registerOptions'], native: ['userId', 'newProjectId', 'nullableBytes'] },
  { name: 'copyProject', args: ['userId', 'projectId', 'newProjectId'], native: ['userId', 'projectId', 'newProjectId'] },
  { name: 'removeProject', args: ['userId', 'projectId', 'removeOptions'], native: ['userId', 'projectId', 'boolean'] },
  { name: 'listProjectFiles', args: ['userId', 'projectId'], native: ['userId', 'projectId'] },
  {
    name: 'deleteProjectFile',
    args: ['userId', 'projectId', 'fileName', 'deleteFileOptions'],
    native: ['userId', 'projectId', 'fileName', 'optionalUploadId'],
  },
  { name: 'moveProjectStorage', args: ['userId', 'projectId', 'moveOptions'], native: ['userId', 'projectId', 'backendName'] },
  { name: 'setQuotaLimit', args: ['userId', 'bytes', 'limitOptions'], native: ['userId', 'bytes', 'optionalAuditText', 'optionalAuditText'] },
  { name: 'getUsage', args: ['userId', 'usageOptions'], native: ['userId', 'boolean'] },
  { name: 'reconcile', args: ['reconcileTarget', 'reconcileOptions'], native: ['optionalUserId', 'boolean', 'boolean'] },
  { name: 'rollback', args: ['steps', 'rollbackOptions'], native: ['steps'] },
  // The binding's backfillStep(batchSize) is checked in Rust (parse_whole) like rollback's steps.
  { name: 'backfill', args: ['backfillOptions'], native: [] },
  // The same options; the binding's prepareMigrationsStep(batchSize) is checked in Rust too.
  { name: 'prepareMigrations', args: ['backfillOptions'], native: [] },
  { name: 'validatePath', args: ['userId', 'projectId', 'candidate'], native: ['userId', 'projectId', 'candidate'] },
  { name: 'diskUsage', args: ['userId', 'projectId'], native: ['userId', 'projectId'] },
]

/** Synchronous exports: bad input throws a StorageQuotaError (INVALID_ARGUMENT) at once. */
export const SYNC_OPERATIONS = [
  { name: 'createClient', accepts: KINDS.clientOptions.accepts, call: (value) => quota.createClient(value) },
  { name: 'formatBytes', accepts: (v) => typeof v === 'number' && Number.isFinite(v), call: (value) => quota.formatBytes(value) },
  { name: 'quotaPercentage (used)', accepts: (v) => typeof v === 'number' && Number.isFinite(v), call: (value) => quota.quotaPercentage(value, 100) },
  { name: 'quotaPercentage (limit)', accepts: (v) => typeof v === 'number' && Number.isFinite(v), call: (value) => quota.quotaPercentage(1, value) },
  {
    name: 'projectPathFor (userId)',
    accepts: KINDS.userId.accepts,
    call: (value) => quota.projectPathFor(value, '3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b'),
  },
  { name: 'projectPathFor (projectId)', accepts: KINDS.projectId.accepts, call: (value) => quota.projectPathFor('user_fuzz', value) },
  { name: 'quotaState', accepts: (v) => typeof v === 'number' && !Number.isNaN(v), call: (value) => quota.quotaState(value) },
]

/** Client methods that take no argument, so have nothing to fuzz. */
export const NO_ARGUMENTS = ['sweepExpiredReservations', 'pruneHistory', 'migrate', 'migrationStatus', 'backfillStatus', 'migrationPreparation', 'close']

/** Valid arguments for `op`, with position `index` replaced by `value`. */
export function argumentsWith(kinds, ctx, index, value) {
  return kinds.map((kind, i) => (i === index ? value : KINDS[kind].valid(ctx)))
}

/** Everything the suites check stays unchanged: every table's rows and the storage root. */
export async function databaseSnapshot(db) {
  const tables = ['user_quotas', 'quota_ledger', 'project_storage_paths', 'projects', 'storage_quota_migrations', 'quota_reservations', 'quota_limit_changes']
  const snapshot = {}
  for (const table of tables) {
    const exists = await db.query('SELECT to_regclass($1) IS NOT NULL AS e', [table])
    snapshot[table] = exists.rows[0].e
      ? (await db.query(`SELECT row_to_json(t)::text AS r FROM ${table} t ORDER BY 1`)).rows.map((r) => r.r)
      : null
  }
  return snapshot
}
