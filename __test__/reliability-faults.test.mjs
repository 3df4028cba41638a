// Faults: the database restarting under load, a pool with no free connection, a statement
// timeout, and a client closed while calls are in flight. Every call must settle within its
// configured bounds with a stable code, and no accepted upload may be lost or counted twice.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { createClient, StorageQuotaError } from '../index.js'
import { createTestDatabase, insertProject, rejection, untilLockWaiters } from './helpers/db.mjs'
import { startOwnPostgres } from './helpers/own-postgres.mjs'

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// Any rejection nobody handled fails the file.
const unhandled = []
process.on('unhandledRejection', (reason) => unhandled.push(reason))
after(() => assert.deepEqual(unhandled, [], 'no unhandled rejection'))

/** Resolves to `{ value }` or `{ error }`, and how long the call took. */
async function timed(promise) {
  const started = performance.now()
  try {
    return { value: await promise, ms: performance.now() - started }
  } catch (error) {
    return { error, ms: performance.now() - started }
  }
}

/** Fails the test if `promises` have not all settled within `ms`. */
async function allSettledWithin(promises, ms, what) {
  let timer
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not settled within ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([Promise.allSettled(promises), deadline])
  } finally {
    clearTimeout(timer)
  }
}

/** An admin connection that holds the row lock of `userId`'s quota until `release()`. */
async function lockQuotaRow(url, userId) {
  const admin = new pg.Client({ connectionString: url })
  await admin.connect()
  await admin.query('BEGIN')
  await admin.query('SELECT 1 FROM user_quotas WHERE user_id = $1 FOR UPDATE', [userId])
  return {
    async release() {
      await admin.query('COMMIT')
      await admin.end()
    },
  }
}

test('PostgreSQL restarted twice under load: bounded failures, pool recovers, retried uploads and commits count once', async () => {
  const own = await startOwnPostgres('restart')
  const storageRoot = await mkdtemp(join(tmpdir(), 'sq-faults-'))
  after(() => rm(storageRoot, { recursive: true, force: true }))
  const connectTimeoutMs = 1000
  const statementTimeoutMs = 2000
  const client = createClient({ databaseUrl: own.url, storageRoot, poolSize: 4, connectTimeoutMs, statementTimeoutMs })
  after(() => client.close())
  await client.migrate()
  const user = 'user_fault'
  const { rows } = await own.query(`INSERT INTO projects (user_id, name) VALUES ($1, 'p') RETURNING id`, [user])
  const project = rows[0].id

  const WORKERS = 8
  const UPLOADS = 40
  const deadline = Date.now() + 40_000
  const codes = new Map()
  let attempts = 0
  let slowest = 0
  let duplicates = 0
  let restarted = false
  const accepted = new Map()

  async function worker(w) {
    // At least UPLOADS each, and on until both restarts are over: calls are batched, and a
    // fixed count could all be done before the first restart.
    for (let k = 0; k < UPLOADS || !restarted; k++) {
      const uploadId = `w${w}-u${k}`
      const bytes = 1000 + w * 100 + k
      // Retry with the same uploadId until it is recorded, as a careful app would.
      for (;;) {
        assert.ok(Date.now() < deadline, `upload ${uploadId} not recorded before the deadline`)
        attempts += 1
        const { value, error, ms } = await timed(client.recordUpload(user, project, bytes, { uploadId }))
        slowest = Math.max(slowest, ms)
        assert.ok(ms < connectTimeoutMs + statementTimeoutMs + 1500, `a call took ${Math.round(ms)} ms`)
        if (value) {
          if (value.duplicate) duplicates += 1
          accepted.set(uploadId, bytes)
          break
        }
        assert.ok(error instanceof StorageQuotaError, String(error))
        assert.ok(['DB_UNAVAILABLE', 'DB_TIMEOUT'].includes(error.code), `${error.code}: ${error.message}`)
        assert.ok(!error.message.includes(own.password), 'no password in messages')
        codes.set(error.code, (codes.get(error.code) ?? 0) + 1)
        await sleep(25)
      }
    }
  }

  // Reservation writers: reserve, then commit; a call that fails is retried. reserveUpload has no
  // idempotency key, so a reservation whose reply was lost is unknown to the writer ("orphan"):
  // it holds its bytes until its TTL. A commit whose reply was lost comes back as CONFLICT
  // ("already committed") on retry.
  const RESERVERS = 3
  const RESERVATIONS = 15
  const committed = new Map()
  let orphanSuspects = 0
  let conflictsAfterLoss = 0
  async function call(run) {
    for (;;) {
      assert.ok(Date.now() < deadline, 'a reservation call did not settle before the deadline')
      attempts += 1
      const { value, error, ms } = await timed(run())
      assert.ok(ms < connectTimeoutMs + statementTimeoutMs + 1500, `a call took ${Math.round(ms)} ms`)
      if (value) return { value }
      assert.ok(error instanceof StorageQuotaError, String(error))
      if (!['DB_UNAVAILABLE', 'DB_TIMEOUT'].includes(error.code)) return { error }
      codes.set(error.code, (codes.get(error.code) ?? 0) + 1)
      await sleep(25)
      return { retry: true }
    }
  }
  async function reserver(w) {
    for (let k = 0; k < RESERVATIONS; k++) {
      const bytes = 500 + w * 10 + k
      for (;;) {
        const reserved = await call(() => client.reserveUpload(user, project, bytes, { ttlMs: 3000 }))
        if (reserved.retry) {
          orphanSuspects += 1
          continue
        }
        assert.ok(reserved.value, String(reserved.error))
        const id = reserved.value.reservationId
        let settled
        let retried = false
        for (;;) {
          settled = await call(() => client.commitUpload(user, id))
          if (!settled.retry) break
          retried = true
        }
        if (settled.value) {
          committed.set(id, bytes)
          break
        }
        if (settled.error.code === 'CONFLICT' && retried && /already committed/.test(settled.error.message)) {
          conflictsAfterLoss += 1
          committed.set(id, bytes)
          break
        }
        // Expired while the server was down: reserve again, as an app would.
        assert.equal(settled.error.code, 'RESERVATION_EXPIRED', settled.error.message)
      }
    }
  }

  const load = Promise.all([
    ...Array.from({ length: WORKERS }, (_, w) => worker(w)),
    ...Array.from({ length: RESERVERS }, (_, w) => reserver(w)),
  ])
  const faults = (async () => {
    await sleep(300)
    await own.restart({ downMs: 1000 })
    await sleep(400)
    await own.restart({ downMs: 300 })
    restarted = true
  })()
  await Promise.all([load, faults])
  assert.ok(restarted)

  const failures = [...codes.values()].reduce((a, b) => a + b, 0)
  assert.ok(failures > 0, 'the restarts hit calls in flight')
  assert.ok(accepted.size >= WORKERS * UPLOADS)
  const ledger = await own.query(
    `SELECT idempotency_key, bytes::float8 AS bytes FROM quota_ledger WHERE user_id = $1 AND idempotency_key NOT LIKE 'reservation %' ORDER BY idempotency_key`,
    [user],
  )
  assert.equal(ledger.rows.length, accepted.size, 'one ledger row per upload')
  for (const row of ledger.rows) assert.equal(row.bytes, accepted.get(row.idempotency_key))
  // Each commit is in the ledger exactly once.
  const commits = await own.query(
    `SELECT idempotency_key, bytes::float8 AS bytes FROM quota_ledger WHERE user_id = $1 AND idempotency_key LIKE 'reservation %'`,
    [user],
  )
  assert.equal(commits.rows.length, RESERVERS * RESERVATIONS)
  for (const row of commits.rows) assert.equal(row.bytes, committed.get(row.idempotency_key.slice('reservation '.length)))
  const expected = [...accepted.values(), ...committed.values()].reduce((a, b) => a + b, 0)
  const usage = await client.checkQuota(user, 0)
  assert.equal(usage.usedBytes, expected, 'each upload and commit counted exactly once')
  // Orphaned reservations hold bytes only until their TTL; then nothing is reserved.
  const orphans = await own.query(`SELECT count(*)::int AS n FROM quota_reservations WHERE user_id = $1 AND status = 'pending'`, [user])
  assert.ok(orphans.rows[0].n <= orphanSuspects, 'a pending reservation the writer does not know came from a lost reply')
  await sleep(3100)
  await client.sweepExpiredReservations()
  const swept = await client.checkQuota(user, 0)
  assert.equal(swept.reservedBytes, 0)
  assert.equal(swept.usedBytes, expected)
  const report = await client.reconcile(user)
  for (const drift of report.users) assert.deepEqual([drift.driftBytes, drift.reservedDriftBytes], [0, 0])
  console.log(
    `# restarts: 2; attempts ${attempts}, failed ${failures} (${JSON.stringify(Object.fromEntries(codes))}), ` +
      `answered as duplicate after a lost reply ${duplicates}, slowest call ${Math.round(slowest)} ms; ` +
      `${committed.size} reservations committed, ${conflictsAfterLoss} commit replies lost (CONFLICT on retry), ` +
      `${orphans.rows[0].n} orphaned reservations (released at TTL)`,
  )
})

test('after a restart, idle pooled connections are replaced without failing a call', async () => {
  const own = await startOwnPostgres('recover')
  const client = createClient({ databaseUrl: own.url, poolSize: 3, connectTimeoutMs: 2000 })
  after(() => client.close())
  await client.migrate()
  // Open three connections and leave them idle in the pool.
  await Promise.all([1, 2, 3].map(() => client.checkQuota('user_idle', 1)))
  await own.restart({ downMs: 200 })
  await own.query('SELECT 1') // the server accepts connections again
  await sleep(100)
  const results = await Promise.allSettled([1, 2, 3, 4, 5, 6].map(() => client.checkQuota('user_idle', 1)))
  const failed = results.filter((r) => r.status === 'rejected').map((r) => `${r.reason.code}: ${r.reason.message}`)
  assert.deepEqual(failed, [], 'no call fails on a connection the restart closed')
})

test('the server going away mid-call fails with DB_UNAVAILABLE; while it is down, calls fail fast', async () => {
  const own = await startOwnPostgres('down')
  const client = createClient({ databaseUrl: own.url, poolSize: 2, connectTimeoutMs: 1500 })
  after(() => client.close())
  await client.migrate()
  await own.kill()
  const { error, ms } = await timed(client.checkQuota('user_down', 1))
  assert.equal(error?.code, 'DB_UNAVAILABLE', String(error))
  assert.equal(error.sqlState, undefined, `nothing answers to say why: ${error.message}`)
  assert.ok(ms < 1500 + 1000, `took ${ms} ms`)
  assert.ok(!error.message.includes(own.password))
  const many = await Promise.all(Array.from({ length: 20 }, () => timed(client.checkQuota('user_down', 1))))
  for (const r of many) {
    assert.equal(r.error?.code, 'DB_UNAVAILABLE')
    assert.ok(r.ms < 1500 + 1000)
  }
  await own.start()
  const back = await client.checkQuota('user_down', 1)
  assert.equal(back.allowed, true)
})

test('pool exhaustion is DB_TIMEOUT within connectTimeoutMs; the blocked call then completes', async () => {
  const db = await createTestDatabase('rel_pool')
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, poolSize: 1, connectTimeoutMs: 500, statementTimeoutMs: 0 })
  after(() => client.close())
  await client.migrate()
  const project = await insertProject(db, 'user_pool')
  await db.query(`INSERT INTO user_quotas (user_id, limit_bytes) VALUES ('user_pool', 1000)`)
  const lock = await lockQuotaRow(db.directUrl, 'user_pool')
  // Holds the only connection, waiting for the row lock.
  const blocked = timed(client.recordUpload('user_pool', project, 10, { uploadId: 'held' }))
  await sleep(150)
  const { error, ms } = await timed(client.checkQuota('user_pool', 1))
  assert.equal(error?.code, 'DB_TIMEOUT', String(error))
  assert.match(error.message, /no database connection became free within 500 ms/)
  assert.equal(error.sqlState, undefined, 'no statement was cancelled: the pool gave up')
  assert.ok(ms >= 400 && ms < 2000, `took ${ms} ms`)
  await lock.release()
  const done = await blocked
  assert.equal(done.value?.usedBytes, 10, String(done.error))
})

test('statementTimeoutMs cancels a blocked statement with DB_TIMEOUT and writes nothing', async () => {
  const db = await createTestDatabase('rel_stmt')
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, statementTimeoutMs: 300 })
  after(() => client.close())
  await client.migrate()
  const project = await insertProject(db, 'user_stmt')
  await db.query(`INSERT INTO user_quotas (user_id, limit_bytes) VALUES ('user_stmt', 1000)`)
  const lock = await lockQuotaRow(db.directUrl, 'user_stmt')
  const { error, ms } = await timed(client.recordUpload('user_stmt', project, 10, { uploadId: 'slow' }))
  await lock.release()
  assert.equal(error?.code, 'DB_TIMEOUT', String(error))
  assert.match(error.message, /statement timeout/)
  assert.equal(error.sqlState, '57014', 'PostgreSQL cancelled it: query_canceled')
  assert.ok(ms >= 250 && ms < 2000, `took ${ms} ms`)
  const ledger = await db.query('SELECT count(*)::int AS n FROM quota_ledger')
  assert.equal(ledger.rows[0].n, 0)
  // The retry with the same id goes through once.
  const retried = await client.recordUpload('user_stmt', project, 10, { uploadId: 'slow' })
  assert.deepEqual([retried.duplicate, retried.usedBytes], [false, 10])
})

test('closing the client while calls are in flight: every one of them finishes, then close() resolves', async () => {
  const db = await createTestDatabase('rel_close')
  const setup = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
  await setup.migrate()
  await setup.close()
  const project = await insertProject(db, 'user_close')
  await db.query(`INSERT INTO user_quotas (user_id, limit_bytes) VALUES ('user_close', 1000000)`)
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, poolSize: 3, statementTimeoutMs: 5000 })
  const lock = await lockQuotaRow(db.directUrl, 'user_close')
  const calls = []
  for (let i = 0; i < 150; i++) {
    if (i % 3 === 0) calls.push(client.checkQuota('user_close', i))
    else if (i % 3 === 1) calls.push(client.recordUpload('user_close', project, i, { uploadId: `c${i}` }))
    else calls.push(client.allocateProjectPath('user_close', project))
  }
  // Each is checked below; a handler now keeps a rejection meanwhile from counting as unhandled.
  for (const call of calls) call.catch(() => {})
  await untilLockWaiters(db, 1)
  let closed = false
  const closing = client.close().then(() => (closed = true))
  const late = await rejection(client.checkQuota('user_close', 1))
  assert.equal(late.code, 'CLIENT_CLOSED')
  // The calls wait for the row lock, and close() for them.
  await untilLockWaiters(db, 1)
  assert.equal(closed, false, 'close() resolved while calls made before it were waiting')
  await lock.release()
  const settled = await allSettledWithin(calls, 8000, 'calls in flight at close()')
  await closing
  const codes = new Set()
  for (const result of settled) {
    if (result.status === 'rejected') {
      assert.ok(result.reason instanceof StorageQuotaError, String(result.reason))
      codes.add(result.reason.code)
    }
  }
  // A call waiting for one of the 3 connections longer than connectTimeoutMs gives up.
  for (const code of codes) assert.ok(['DB_TIMEOUT'].includes(code), code)
  // What resolved was recorded, and nothing else.
  const recorded = settled
    .map((r, i) => ({ r, i }))
    .filter(({ r, i }) => i % 3 === 1 && r.status === 'fulfilled')
    .map(({ i }) => `c${i}`)
    .sort()
  const ledger = await db.query(`SELECT idempotency_key FROM quota_ledger ORDER BY idempotency_key`)
  assert.deepEqual(ledger.rows.map((r) => r.idempotency_key), recorded)
})

test('a connection cut mid-call fails that call only; the immediate retry with the same uploadId succeeds once', async () => {
  const db = await createTestDatabase('rel_cut')
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, poolSize: 1, applicationName: 'sq-cut-test' })
  after(() => client.close())
  await client.migrate()
  const project = await insertProject(db, 'user_cut')
  await db.query(`INSERT INTO user_quotas (user_id, limit_bytes) VALUES ('user_cut', 1000000)`)
  const admin = new pg.Client({ connectionString: db.directUrl })
  admin.on('error', () => {})
  await admin.connect()
  const CUTS = 10
  for (let i = 0; i < CUTS; i++) {
    await admin.query('BEGIN')
    await admin.query(`SELECT 1 FROM user_quotas WHERE user_id = 'user_cut' FOR UPDATE`)
    const blocked = timed(client.recordUpload('user_cut', project, 10, { uploadId: `cut-${i}` }))
    // Cut only once the call is really waiting on the row lock (a fixed sleep races on a busy machine).
    for (let waited = 0; waited < 10_000; waited += 20) {
      const { rows } = await admin.query(
        `SELECT 1 FROM pg_stat_activity WHERE application_name = 'sq-cut-test' AND wait_event_type = 'Lock'`,
      )
      if (rows.length > 0) break
      await sleep(20)
    }
    await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'sq-cut-test'`)
    await admin.query('COMMIT')
    const { error } = await blocked
    assert.equal(error?.code, 'DB_UNAVAILABLE', String(error))
    assert.equal(error.sqlState, '57P01', `the server said why (admin_shutdown): ${error.message}`)
    // No pause: the pool must not hand out the connection the server just cut.
    const retried = await client.recordUpload('user_cut', project, 10, { uploadId: `cut-${i}` })
    assert.equal(retried.duplicate, false)
  }
  await admin.end()
  const usage = await client.checkQuota('user_cut', 0)
  assert.equal(usage.usedBytes, 10 * CUTS)
})
