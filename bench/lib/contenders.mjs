// The contenders: our addon through its public API, and the same operations written the way a
// careful developer would with `pg` (node-postgres) and `postgres` (postgres.js): the same SQL
// (read from src/quota/usage.rs), prepared statements, the same retry and refusal logic, the same pool
// size. Each contender is `{ checkQuota, recordUpload, reserveCommit, close }`; a new operation
// is added to each contender here, to `measure` in bench/lib/worker.mjs and, for the pgbench
// ceiling, to bench/lib/pgbench.mjs.
import { createRequire } from 'node:module'
import { randomUUID } from 'node:crypto'
import { COMMIT, ENSURE_QUOTA_ROW_SQL, RECORD_UPLOAD, RESERVE, SELECT_USAGE, SWEEP_USER_SQL } from './sql.mjs'

const require = createRequire(import.meta.url)
const DEFAULT_LIMIT = 1_073_741_824

class QuotaExceeded extends Error {
  code = 'QUOTA_EXCEEDED'
}

/**
 * The decision logic of src/quota/usage.rs record_upload, over any driver: `q(sql, name, params)`
 * runs a prepared statement and resolves to its rows as plain objects with numbers.
 */
async function recordUploadWith(q, user, project, bytes, uploadId) {
  for (let attempt = 0; attempt < 4; attempt++) {
    let row
    try {
      ;[row] = await q(RECORD_UPLOAD, 'sq_record_upload', [user, project, uploadId, bytes])
    } catch (error) {
      if (error.code === '23505') continue
      throw error
    }
    if (row.prior_bytes != null) {
      if (Number(row.prior_bytes) !== bytes || row.prior_project !== project) throw new Error('CONFLICT')
      const [usage] = await q(SELECT_USAGE, 'sq_select_usage', [user])
      return { uploadId, bytes, duplicate: true, ...usageOf(usage) }
    }
    if (row.owner_id == null) throw new Error('NOT_FOUND')
    if (row.owner_id !== user) throw new Error('FORBIDDEN')
    // Expired reservations still counted: give them back, then charge again (the addon sends
    // both in one transaction; rare, and never on the bench's users).
    if (row.expired_pending) {
      await q(SWEEP_USER_SQL, 'sq_sweep_user', [user])
      continue
    }
    if (Number(row.entries) === 1) return { uploadId, bytes, duplicate: false, ...usageOf(row) }
    await afterUncharged(q, user, bytes)
  }
  throw new Error('recordUpload could not settle')
}

/**
 * Nothing was charged for a known owner (src/quota/usage.rs after_uncharged): create a missing quota
 * row, or let the caller retry when room appeared; otherwise the refusal.
 */
async function afterUncharged(q, user, bytes) {
  const [usage] = await q(SELECT_USAGE, 'sq_select_usage', [user])
  if (!usage) {
    await q(ENSURE_QUOTA_ROW_SQL, 'sq_ensure_quota_row', [user, DEFAULT_LIMIT])
    return
  }
  const u = usageOf(usage)
  if (u.usedBytes + u.reservedBytes + bytes > u.limitBytes) throw new QuotaExceeded('quota exceeded')
}

/** reserveUpload then commitUpload (of the reserved size), as src/quota/reservations.rs does them. */
async function reserveCommitWith(q, user, project, bytes) {
  const id = randomUUID()
  for (let attempt = 0; attempt < 4; attempt++) {
    const [row] = await q(RESERVE, 'sq_reserve', [user, project, bytes, id, 3_600_000])
    if (row.owner_id == null) throw new Error('NOT_FOUND')
    if (row.owner_id !== user) throw new Error('FORBIDDEN')
    if (row.expired_pending) {
      await q(SWEEP_USER_SQL, 'sq_sweep_user', [user])
      continue
    }
    if (row.expires_at != null) {
      const [settled] = await q(COMMIT, 'sq_commit', [id, null, user, `reservation ${id}`, 'upload'])
      if (Number(settled.writes) !== 2) throw new Error('commit did not settle')
      return { reservationId: id, ...usageOf(settled) }
    }
    await afterUncharged(q, user, bytes)
  }
  throw new Error('reserveUpload could not settle')
}

function usageOf(row) {
  const usedBytes = Number(row.used_bytes)
  const reservedBytes = Number(row.reserved_bytes)
  const limitBytes = Number(row.limit_bytes)
  return {
    usedBytes,
    reservedBytes,
    limitBytes,
    remainingBytes: Math.max(0, limitBytes - usedBytes - reservedBytes),
  }
}

async function checkQuotaWith(q, user, bytes) {
  const [row] = await q(SELECT_USAGE, 'sq_select_usage', [user])
  const usage = row ? usageOf(row) : { usedBytes: 0, reservedBytes: 0, limitBytes: DEFAULT_LIMIT, remainingBytes: DEFAULT_LIMIT }
  return { allowed: usage.usedBytes + usage.reservedBytes + bytes <= usage.limitBytes, requestedBytes: bytes, ...usage }
}

export const CONTENDERS = {
  async ours({ url, poolSize, applicationName = 'bench-ours', minConnections }) {
    // STORAGE_QUOTA_BENCH_PACKAGE=/other/checkout/index.js: A/B of the JS layer in one run.
    const { createClient } = require(process.env.STORAGE_QUOTA_BENCH_PACKAGE ?? '../../index.js')
    const client = createClient({ databaseUrl: url, poolSize, applicationName, minConnections })
    return {
      checkQuota: (user, bytes) => client.checkQuota(user, bytes),
      recordUpload: (user, project, bytes, uploadId) => client.recordUpload(user, project, bytes, { uploadId }),
      reserveCommit: async (user, project, bytes) => {
        const held = await client.reserveUpload(user, project, bytes)
        return client.commitUpload(user, held.reservationId)
      },
      close: () => client.close(),
    }
  },

  async pg({ url, poolSize, applicationName = 'bench-pg' }) {
    const pg = require('pg')
    const pool = new pg.Pool({ connectionString: url, max: poolSize, application_name: applicationName })
    // A named query is prepared once per connection by node-postgres.
    const q = async (text, name, values) => (await pool.query({ name, text, values })).rows
    return {
      checkQuota: (user, bytes) => checkQuotaWith(q, user, bytes),
      recordUpload: (user, project, bytes, uploadId) => recordUploadWith(q, user, project, bytes, uploadId),
      reserveCommit: (user, project, bytes) => reserveCommitWith(q, user, project, bytes),
      close: () => pool.end(),
    }
  },

  /** pg with unnamed statements, as it must be configured behind a transaction pooler. */
  async pgunnamed({ url, poolSize }) {
    const pg = require('pg')
    const pool = new pg.Pool({ connectionString: url, max: poolSize, application_name: 'bench-pg-unnamed' })
    const q = async (text, _name, values) => (await pool.query(text, values)).rows
    return {
      checkQuota: (user, bytes) => checkQuotaWith(q, user, bytes),
      recordUpload: (user, project, bytes, uploadId) => recordUploadWith(q, user, project, bytes, uploadId),
      reserveCommit: (user, project, bytes) => reserveCommitWith(q, user, project, bytes),
      close: () => pool.end(),
    }
  },

  async postgresjs({ url, poolSize, applicationName = 'bench-postgresjs' }) {
    const postgres = require('postgres')
    const sql = postgres(url, {
      max: poolSize,
      prepare: true,
      onnotice: () => {},
      connection: { application_name: applicationName },
    })
    const q = (text, _name, values) => sql.unsafe(text, values, { prepare: true })
    return {
      checkQuota: (user, bytes) => checkQuotaWith(q, user, bytes),
      recordUpload: (user, project, bytes, uploadId) => recordUploadWith(q, user, project, bytes, uploadId),
      reserveCommit: (user, project, bytes) => reserveCommitWith(q, user, project, bytes),
      close: () => sql.end({ timeout: 5 }),
    }
  },
}
