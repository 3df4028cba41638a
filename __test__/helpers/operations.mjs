// Every exported function that takes arguments, and how to make valid arguments for it. The
// bad-input and security suites walk this table, so a new function is covered by adding a row
// (and, for a new kind of argument, an entry in KINDS).
import { z } from 'zod'
import * as quota from '../../index.js'

const { UserIdSchema, ProjectIdSchema, BytesSchema, RecordUploadOptionsSchema, ClientOptionsSchema } = quota

/** Whether Zod accepts `value`; a value whose reading throws (getter, Proxy) is not valid. */
function accepts(schema, value) {
  try {
    return schema.safeParse(value).success
  } catch {
    return false
  }
}

/**
 * Kinds of argument: `valid(ctx)` makes a good one, `accepts(v)` says whether the JS layer
 * takes `v` as it is (undefined and null options count as "no options").
 */
export const KINDS = {
  userId: { valid: (ctx) => ctx.userId, accepts: (v) => accepts(UserIdSchema, v) },
  projectId: { valid: (ctx) => ctx.projectId, accepts: (v) => accepts(ProjectIdSchema, v) },
  bytes: { valid: () => 1, accepts: (v) => accepts(BytesSchema, v) },
  uploadOptions: {
    valid: (ctx) => ({ uploadId: ctx.uploadId }),
    accepts: (v) => accepts(RecordUploadOptionsSchema, v ?? {}),
  },
  steps: { valid: () => 1, accepts: (v) => v === undefined || accepts(z.number().int().min(1).max(1000), v) },
  clientOptions: { valid: (ctx) => ctx.clientOptions, accepts: (v) => accepts(ClientOptionsSchema, v ?? {}) },
}

/**
 * Async methods of a client (and of the module-level functions of the same name). `native`
 * is the NativeClient method name when it differs in nothing but being the raw binding.
 * `writes` marks calls that change the database when their arguments are valid.
 */
export const OPERATIONS = [
  { name: 'checkQuota', args: ['userId', 'bytes'] },
  { name: 'recordUpload', args: ['userId', 'projectId', 'bytes', 'uploadOptions'], writes: true },
  { name: 'allocateProjectPath', args: ['userId', 'projectId'], writes: true },
  { name: 'rollback', args: ['steps'], writes: true },
  // TODO(lifecycle): reserveUpload, commitUpload, cancelReservation, deleteUpload, copyProject,
  // registerProject, removeProject, setLimit, getUsage, reconcile — one row each.
]

/** Synchronous exports: bad input throws a StorageQuotaError (INVALID_ARGUMENT) at once. */
export const SYNC_OPERATIONS = [
  { name: 'createClient', args: ['clientOptions'], call: (args) => quota.createClient(...args) },
  { name: 'formatBytes', args: ['number'], call: (args) => quota.formatBytes(...args) },
]

/** Valid arguments for `op`, with position `index` replaced by `value`. */
export function argumentsWith(op, ctx, index, value) {
  return op.args.map((kind, i) => (i === index ? value : KINDS[kind].valid(ctx)))
}

/** Everything the suites check stays unchanged: every table's rows and the storage root. */
export async function databaseSnapshot(db) {
  const tables = ['user_quotas', 'quota_ledger', 'project_storage_paths', 'projects', 'storage_quota_migrations']
  const snapshot = {}
  for (const table of tables) {
    const exists = await db.query('SELECT to_regclass($1) IS NOT NULL AS e', [table])
    snapshot[table] = exists.rows[0].e
      ? (await db.query(`SELECT row_to_json(t)::text AS r FROM ${table} t ORDER BY 1`)).rows.map((r) => r.r)
      : null
  }
  return snapshot
}
