// Invariants the database keeps, tried under races: reserved_bytes equals the sum of pending
// reservations, reconcile never subtracts an expired reservation twice, per-project usage is a
// counter kept with every charge; and database errors keep what PostgreSQL said.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import pg from 'pg'
import { createClient } from '../index.js'
import { MIGRATION_VERSIONS, createTestDatabase, insertProject, quotaCounters, rejection } from './helpers/db.mjs'

const KB = 1024
const db = await createTestDatabase('invariants')
const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: 10_000 * KB, poolSize: 8, logger: false })
await client.migrate()
after(() => client.close())

async function pendingSum(user) {
  const { rows } = await db.query(
    `SELECT coalesce(sum(bytes), 0)::float8 AS s FROM quota_reservations WHERE user_id = $1 AND status = 'pending'`,
    [user],
  )
  return rows[0].s
}

/** Waits until a backend of this database is blocked on a lock (a condition, not a sleep). */
async function untilSomeoneWaitsOnALock() {
  for (;;) {
    const { rows } = await db.query(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`,
    )
    if (rows[0].n > 0) return
    await new Promise((resolve) => setImmediate(resolve))
  }
}

test('reconcile({ fix }) while a reservation expires under it never subtracts it twice', async () => {
  const user = 'user_inv_expire'
  const project = await insertProject(db, user)
  const held = await client.reserveUpload(user, project, 30 * KB)
  await client.reserveUpload(user, project, 20 * KB)
  // Hold the user's quota row so reconcile stops right before it reads the counters; expire
  // the reservation meanwhile, then let reconcile go on.
  const other = new pg.Client({ connectionString: db.url })
  await other.connect()
  try {
    await other.query('BEGIN')
    await other.query('SELECT 1 FROM user_quotas WHERE user_id = $1 FOR UPDATE', [user])
    const reconciling = client.reconcile(user, { fix: true })
    await untilSomeoneWaitsOnALock()
    await other.query(`UPDATE quota_reservations SET expires_at = now() - interval '1 hour' WHERE id = $1`, [held.reservationId])
    await other.query('COMMIT')
    await reconciling
  } finally {
    await other.end()
  }
  const c = await quotaCounters(db, user)
  assert.equal(c.reserved, await pendingSum(user), 'reserved_bytes is the sum of pending reservations')
  await client.sweepExpiredReservations()
  assert.deepEqual(await quotaCounters(db, user), { used: 0, reserved: 20 * KB, ledger: 0 }, 'the expired 30 KB given back once')
})

test('reserved_bytes stays the sum of pending reservations among expiries, commits, cancels, uploads and reconciles', async () => {
  const user = 'user_inv_mix'
  const project = await insertProject(db, user)
  const holds = await Promise.all(Array.from({ length: 30 }, (_, i) => client.reserveUpload(user, project, (i + 1) * KB)))
  await db.query(`UPDATE quota_reservations SET expires_at = now() - interval '1 minute' WHERE id = ANY($1)`, [
    holds.filter((_, i) => i % 3 === 0).map((h) => h.reservationId),
  ])
  const work = []
  holds.forEach((h, i) => {
    if (i % 3 === 1) work.push(client.commitUpload(user, h.reservationId).catch((e) => e))
    if (i % 3 === 2) work.push(client.cancelUpload(user, h.reservationId).catch((e) => e))
    work.push(client.recordUpload(user, project, 100 + i))
    if (i % 5 === 0) work.push(client.reconcile(user, { fix: true }))
    if (i % 7 === 0) work.push(client.reserveUpload(user, project, KB))
  })
  const results = await Promise.all(work)
  for (const r of results) if (r instanceof Error) assert.fail(`${r.code}: ${r.message}`)
  const c = await quotaCounters(db, user)
  assert.equal(c.reserved, await pendingSum(user))
  assert.equal(c.used, c.ledger)
  await client.reconcile(user, { fix: true })
  await client.sweepExpiredReservations()
  const end = await quotaCounters(db, user)
  assert.equal(end.reserved, await pendingSum(user))
  assert.ok(end.reserved >= 0)
})

test('per-project usage is a counter kept with each charge, and agrees with the ledger', async () => {
  const user = 'user_inv_proj'
  const [a, b] = [await insertProject(db, user), await insertProject(db, user)]
  await Promise.all(Array.from({ length: 20 }, (_, i) => client.recordUpload(user, i % 2 ? a : b, KB + i)))
  await client.recordDeletion(user, a, 3 * KB)
  const held = await client.reserveUpload(user, b, 5 * KB)
  await client.commitUpload(user, held.reservationId, 4 * KB)
  const { rows } = await db.query(
    `SELECT project_id, used_bytes::float8 AS used FROM quota_project_usage WHERE user_id = $1 ORDER BY project_id`,
    [user],
  )
  const { rows: ledger } = await db.query(
    `SELECT project_id, sum(bytes)::float8 AS used FROM quota_ledger WHERE user_id = $1 GROUP BY 1 ORDER BY 1`,
    [user],
  )
  assert.deepEqual(rows, ledger)
  const usage = await client.getUsage(user, { projects: true })
  const byProject = Object.fromEntries(usage.projects.map((p) => [p.projectId, p.usedBytes]))
  for (const row of rows) assert.equal(byProject[row.project_id], row.used)
})

test('migrating an existing database fills the per-project counters from its ledger', async () => {
  const user = 'user_inv_backfill'
  const project = await insertProject(db, user)
  await client.recordUpload(user, project, 9 * KB)
  // Back to 0002 (every later migration reverted), then an entry written as 0002's schema would.
  const later = MIGRATION_VERSIONS.filter((v) => v >= 3)
  const { reverted } = await client.rollback(later.length)
  assert.deepEqual(reverted, [...later].reverse())
  assert.equal((await db.query(`SELECT to_regclass('quota_project_usage') AS t`)).rows[0].t, null)
  await db.query(
    `INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes) VALUES ($1, $2, 'older', 'upload', 1000)`,
    [user, project],
  )
  await client.migrate()
  const { rows } = await db.query('SELECT used_bytes::float8 AS used FROM quota_project_usage WHERE user_id = $1', [user])
  assert.deepEqual(rows, [{ used: 9 * KB + 1000 }])
})

test('hot deletes and reads have their indexes: projects(storage_path_id), project_storage_paths(user_id)', async () => {
  const { rows } = await db.query(
    `SELECT t.relname AS table_name, a.attname AS column_name
       FROM pg_index i
       JOIN pg_class t ON t.oid = i.indrelid
       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
      WHERE t.relname IN ('projects', 'project_storage_paths')`,
  )
  const has = (table, column) => rows.some((r) => r.table_name === table && r.column_name === column)
  assert.ok(has('projects', 'storage_path_id'), 'projects(storage_path_id)')
  assert.ok(has('project_storage_paths', 'user_id'), 'project_storage_paths(user_id)')
})

test('the guard\'s refusal (SQLSTATE SQ001) is QUOTA_EXCEEDED with the numbers, not DB_ERROR', async () => {
  const user = 'user_inv_guard'
  const project = await insertProject(db, user)
  await client.setQuotaLimit(user, 100 * KB)
  // Another writer in the same database that adds bytes behind our back (here: a trigger), so
  // our own check passes and the database's guard is the one to refuse.
  await db.query(`
    CREATE FUNCTION test_sneak() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      UPDATE user_quotas SET used_bytes = used_bytes + 95 * 1024 WHERE user_id = NEW.user_id;
      RETURN NULL;
    END $$;
    CREATE TRIGGER test_sneak AFTER INSERT ON quota_ledger FOR EACH ROW
      WHEN (NEW.idempotency_key = 'sneaky') EXECUTE FUNCTION test_sneak();`)
  try {
    const error = await rejection(client.recordUpload(user, project, 10 * KB, { uploadId: 'sneaky' }))
    assert.equal(error.code, 'QUOTA_EXCEEDED', `${error.code}: ${error.message}`)
    assert.equal(error.limitBytes, 100 * KB)
    assert.equal(error.usedBytes, 10 * KB, 'the numbers the guard saw before the refused change')
  } finally {
    await db.query('DROP TRIGGER test_sneak ON quota_ledger; DROP FUNCTION test_sneak()')
  }
  assert.deepEqual(await quotaCounters(db, user), { used: 0, reserved: 0, ledger: 0 })
})

test('a database error keeps its SQLSTATE and constraint name as fields', async () => {
  const user = 'user_inv_dberr'
  const project = await insertProject(db, user)
  await db.query(`ALTER TABLE quota_ledger ADD CONSTRAINT test_no_forbidden CHECK (idempotency_key <> 'forbidden') NOT VALID`)
  try {
    const error = await rejection(client.recordUpload(user, project, KB, { uploadId: 'forbidden' }))
    assert.equal(error.code, 'DB_ERROR')
    assert.equal(error.sqlState, '23514')
    assert.equal(error.constraint, 'test_no_forbidden')
    assert.equal(error.table, 'quota_ledger')
    assert.match(error.cause.cause.message, /violates check constraint "test_no_forbidden"/, 'the driver error as the cause chain')
  } finally {
    await db.query('ALTER TABLE quota_ledger DROP CONSTRAINT test_no_forbidden')
  }
})

test('pruneHistory applies the retention period: old history folded away, every sum and counter unchanged', async () => {
  const user = 'user_inv_prune'
  const [a, b] = [await insertProject(db, user), await insertProject(db, user)]
  const sums = async () =>
    (await db.query(`SELECT project_id, sum(bytes)::float8 AS s FROM quota_ledger WHERE user_id = $1 GROUP BY 1 ORDER BY 1`, [user])).rows
  const projectCounters = async () =>
    (await db.query(`SELECT project_id, used_bytes::float8 AS s FROM quota_project_usage WHERE user_id = $1 ORDER BY 1`, [user])).rows
  for (let round = 0; round < 2; round++) {
    await Promise.all(Array.from({ length: 6 }, (_, i) => client.recordUpload(user, i % 2 ? a : b, KB + i)))
    await client.recordDeletion(user, a, 100)
    const held = await client.reserveUpload(user, b, 2 * KB)
    await client.commitUpload(user, held.reservationId)
    const live = await client.reserveUpload(user, a, 3 * KB) // pending: never pruned
    // Age everything (but the pending reservation) past the 90-day default: move the clock, no sleeping.
    await db.query(`UPDATE quota_ledger SET created_at = now() - interval '100 days' WHERE user_id = $1`, [user])
    await db.query(
      `UPDATE quota_reservations SET settled_at = now() - interval '100 days' WHERE user_id = $1 AND status <> 'pending'`,
      [user],
    )
    const [countersBefore, sumsBefore, projectsBefore] = [await quotaCounters(db, user), await sums(), await projectCounters()]
    const pruned = await client.pruneHistory()
    assert.ok(pruned.ledgerEntries >= 8 && pruned.reservations >= 1, JSON.stringify(pruned))
    assert.deepEqual(await quotaCounters(db, user), countersBefore)
    assert.deepEqual(await sums(), sumsBefore)
    assert.deepEqual(await projectCounters(), projectsBefore)
    const { rows } = await db.query(`SELECT status FROM quota_reservations WHERE user_id = $1`, [user])
    assert.ok(rows.every((r) => r.status === 'pending'), 'only pending reservations stay')
    const report = await client.reconcile(user)
    assert.equal(report.driftedUsers, 0, 'nothing drifted')
    await client.cancelUpload(user, live.reservationId)
  }
  const { rows } = await db.query(`SELECT count(*)::int AS n FROM quota_ledger WHERE user_id = $1 AND idempotency_key LIKE 'carry %'`, [user])
  assert.equal(rows[0].n, 2, 'one carry entry per project, however often pruned')
})

test('rolling 0003 back refuses, changing nothing, while two users hold the same reservation id', async () => {
  const [alice, bob] = ['user_inv_rb1', 'user_inv_rb2']
  const [pa, pb] = [await insertProject(db, alice), await insertProject(db, bob)]
  const id = '6f1d7a52-3c1e-4f0b-9a7d-2b8c4e5f6a71'
  await client.reserveUpload(alice, pa, KB, { reservationId: id })
  await client.reserveUpload(bob, pb, KB, { reservationId: id })
  const later = MIGRATION_VERSIONS.filter((v) => v >= 3)
  const error = await rejection(client.rollback(later.length))
  assert.equal(error.code, 'MIGRATION_FAILED')
  assert.match(error.message, /used by more than one user/)
  const { applied } = await client.migrationStatus()
  assert.ok(applied.some((m) => m.version === 3), '0003 stays applied')
  await client.migrate() // re-applies whatever later migration the rollback reverted first
  await client.cancelUpload(alice, id)
  await client.cancelUpload(bob, id)
  assert.deepEqual(await quotaCounters(db, alice), { used: 0, reserved: 0, ledger: 0 })
})
