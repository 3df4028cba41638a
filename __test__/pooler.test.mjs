// Behind PgBouncer (Debian's 1.18: no prepared-statement support, refuses unknown startup
// parameters) in transaction and session mode, with the pooler's default settings.
process.env.STORAGE_QUOTA_LOG = 'off' // the restarts below log connection_lost by design
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import pg from 'pg'
import { createClient } from '../index.js'
import { ADMIN_URL, createTestDatabase, holdRow, insertProject, quotaCounters, rejection, untilLockWaiters } from './helpers/db.mjs'
import { startPgBouncer } from './helpers/pgbouncer.mjs'

const MB = 1024 * 1024
const admin = new URL(ADMIN_URL)
const server = { host: admin.hostname, port: Number(admin.port || 5432), user: decodeURIComponent(admin.username || 'postgres') }
const db = await createTestDatabase('pooler')
const transaction = await startPgBouncer({ server, poolMode: 'transaction', defaultPoolSize: 4, tag: 'pgb-tx' })
const session = await startPgBouncer({ server, poolMode: 'session', defaultPoolSize: 8, tag: 'pgb-session' })

const clients = []
function client(url, options = {}) {
  const c = createClient({ databaseUrl: url, storageRoot: db.storageRoot, defaultQuotaBytes: 100 * MB, logger: false, ...options })
  clients.push(c)
  return c
}
after(() => Promise.all(clients.map((c) => c.close())))

await client(db.url).migrate()

/** 640 calls at once from one client: uploads, checks, reservations, commits, cancels, deletions. */
async function mixedLoad(quota, tag) {
  const users = Array.from({ length: 8 }, (_, i) => `pool_${tag}_${i}`)
  const projects = await Promise.all(users.map((user) => insertProject(db, user)))
  const calls = []
  for (let i = 0; i < 640; i++) {
    const u = i % users.length
    const [user, project] = [users[u], projects[u]]
    switch (i % 5) {
      case 0:
        calls.push(quota.recordUpload(user, project, 1000, { uploadId: `${tag}-up-${i}` }))
        break
      case 1:
        calls.push(quota.checkQuota(user, 5000))
        break
      case 2:
        calls.push(quota.reserveUpload(user, project, 700).then((r) => quota.commitUpload(user, r.reservationId, 500)))
        break
      case 3:
        calls.push(quota.reserveUpload(user, project, 300).then((r) => quota.cancelUpload(user, r.reservationId)))
        break
      default:
        calls.push(
          quota
            .recordUpload(user, project, 200, { uploadId: `${tag}-del-${i}` })
            .then(() => quota.recordDeletion(user, project, 200, { deletionId: `${tag}-gone-${i}` })),
        )
    }
  }
  const results = await Promise.allSettled(calls)
  const failed = results.filter((r) => r.status === 'rejected').map((r) => `${r.reason.code}: ${r.reason.message}`)
  assert.deepEqual(failed.slice(0, 3), [], `${failed.length} of 640 calls failed`)
  for (const user of users) {
    const counters = await quotaCounters(db, user)
    // 16 uploads of 1000 and 16 commits of 500 per user; reservations all settled.
    assert.deepEqual(counters, { used: 16 * 1000 + 16 * 500, reserved: 0, ledger: 16 * 1000 + 16 * 500 }, user)
  }
}

test('transaction mode with ?pgbouncer=true: 640 concurrent calls all succeed and count exactly', async () => {
  await mixedLoad(client(transaction.url(db.name)), 'tx')
})

test('transaction mode with statementCache: false, the same', async () => {
  await mixedLoad(client(transaction.url(db.name, { pooler: false }), { statementCache: false, poolSize: 16 }), 'nocache')
})

test('session mode with ?pgbouncer=true', async () => {
  await mixedLoad(client(session.url(db.name), { poolSize: 6 }), 'session')
})

test('migrations, status, reconcile, usage and project paths through the transaction pooler', async () => {
  const quota = client(transaction.url(db.name))
  assert.deepEqual((await quota.migrate()).applied, [])
  const status = await quota.migrationStatus()
  assert.equal(status.pending.length, 0)
  const user = 'pool_admin'
  const project = await insertProject(db, user)
  const allocated = await quota.allocateProjectPath(user, project)
  assert.deepEqual(await quota.allocateProjectPath(user, project), allocated)
  await quota.recordUpload(user, project, 4 * MB, { uploadId: 'a' })
  await quota.setQuotaLimit(user, 50 * MB)
  const usage = await quota.getUsage(user, { projects: true })
  assert.equal(usage.usedBytes, 4 * MB)
  assert.equal(usage.projects.length, 1)
  const report = await quota.reconcile(user)
  assert.deepEqual([report.checkedUsers, report.driftedUsers], [1, 0])
  assert.equal((await quota.sweepExpiredReservations()).users, 0)
})

test('copyProject through the transaction pooler: concurrent copies into one project copy once, and no lock is left behind', async () => {
  const quota = client(transaction.url(db.name), { poolSize: 4 })
  const user = 'pool_copy'
  const [source, ...targets] = await Promise.all(Array.from({ length: 4 }, (_, i) => insertProject(db, user, `p${i}`)))
  const { path } = await quota.allocateProjectPath(user, source)
  await writeFile(join(path, 'a.bin'), Buffer.alloc(3000, 1))
  for (const target of targets) {
    const copies = await Promise.all(Array.from({ length: 6 }, () => quota.copyProject(user, source, target)))
    assert.deepEqual(copies.map((c) => c.copiedBytes), copies.map(() => 3000))
    assert.equal(copies.filter((c) => !c.duplicate).length, 1, 'copied once, the others answered duplicate')
  }
  assert.equal((await quotaCounters(db, user)).used, 9000)
  // A session-level advisory lock taken through a transaction pooler stays with whichever server
  // connection ran it, and later copies into that project would wait for it for the whole TTL.
  const { rows } = await db.query(`SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`)
  assert.equal(rows[0].n, 0, 'advisory locks left on server connections')
  assert.equal((await db.query('SELECT count(*)::int AS n FROM quota_copy_leases')).rows[0].n, 0, 'leases given back')
})

test('copyProject through the transaction pooler, its connection cut mid-copy: the retry takes over at once, not after the lease TTL', { timeout: 60_000 }, async () => {
  const quota = client(transaction.url(db.name), { poolSize: 2 })
  const user = 'pool_copy_cut'
  const [source, target] = await Promise.all([insertProject(db, user, 'src'), insertProject(db, user, 'dst')])
  const { path } = await quota.allocateProjectPath(user, source)
  await writeFile(join(path, 'a.bin'), Buffer.alloc(3000, 1))
  await quota.checkQuota(user, 1) // the quota row exists, so the copy's reservation waits on it
  // The copy takes its lease, then waits for the quota row held here; its server connection is
  // then terminated, so the call fails on a connection that cannot give the lease back.
  const held = await holdRow(db, user)
  const cut = rejection(quota.copyProject(user, source, target))
  await untilLockWaiters(db, 1)
  await db.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()`)
  const failed = await cut
  assert.ok(failed.code, String(failed))
  await held.release()
  // The default reservation TTL (an hour) bounds the lease: without giving it back, this retry
  // would wait for it that long (the test's timeout fails it first).
  const copied = await quota.copyProject(user, source, target)
  assert.equal(copied.copiedBytes, 3000)
  assert.equal((await quotaCounters(db, user)).used, 3000, "the copy counted once")
  assert.equal((await db.query('SELECT count(*)::int AS n FROM quota_copy_leases')).rows[0].n, 0, 'leases given back')
})

test('copyProject through the transaction pooler whose lease reply is lost after the commit: the retry does not wait for the lease TTL', { timeout: 60_000 }, async () => {
  // Its own pooler, restarted below.
  const bouncer = await startPgBouncer({ server, poolMode: 'transaction', defaultPoolSize: 2, tag: 'pgb-lost' })
  const quota = client(bouncer.url(db.name), { poolSize: 2 })
  const user = 'pool_copy_lost'
  const [source, target] = await Promise.all([insertProject(db, user, 'src'), insertProject(db, user, 'dst')])
  const { path } = await quota.allocateProjectPath(user, source)
  await writeFile(join(path, 'a.bin'), Buffer.alloc(3000, 1))
  // The lease's commit waits (a deferred trigger, run at COMMIT) for an advisory lock held here,
  // and notes that it committed. The call's connection is cut while its COMMIT waits; released,
  // the COMMIT goes through on the server with nobody left to hear it: a lease the call took
  // without knowing. The lock is released only after a delete of leases has run (and found
  // nothing): giving the lease back must not stop there.
  await db.query(`
    CREATE TABLE lost_lease_commits (holder uuid);
    CREATE TABLE lost_lease_deletes (at timestamptz);
    CREATE FUNCTION lost_lease_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO lost_lease_deletes VALUES (now());
      RETURN NULL;
    END $$;
    CREATE TRIGGER lost_lease_deleted AFTER DELETE ON quota_copy_leases
      FOR EACH STATEMENT EXECUTE FUNCTION lost_lease_deleted();
    CREATE FUNCTION lost_lease_wait() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      PERFORM pg_advisory_xact_lock(4711);
      INSERT INTO lost_lease_commits VALUES (NEW.holder);
      RETURN NULL;
    END $$;
    CREATE CONSTRAINT TRIGGER lost_lease_wait AFTER INSERT OR UPDATE ON quota_copy_leases
      DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.user_id = 'pool_copy_lost')
      EXECUTE FUNCTION lost_lease_wait();`)
  const gate = new pg.Client({ connectionString: db.url })
  await gate.connect()
  try {
    await gate.query('SELECT pg_advisory_lock(4711)')
    const cut = rejection(quota.copyProject(user, source, target))
    // The server session whose COMMIT waits for the advisory lock.
    let waiting = []
    while (waiting.length === 0) {
      ;({ rows: waiting } = await db.query(
        `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'`,
      ))
      if (waiting.length === 0) await new Promise((resolve) => setImmediate(resolve))
    }
    await bouncer.restart()
    const failed = await cut
    assert.equal(failed.code, 'DB_UNAVAILABLE', String(failed))
    while ((await db.query('SELECT count(*)::int AS n FROM lost_lease_deletes')).rows[0].n === 0) {
      await new Promise((resolve) => setImmediate(resolve))
    }
    await gate.query('SELECT pg_advisory_unlock(4711)')
    // The COMMIT has ended once its session is gone: it found its client gone when it answered.
    // (No longer waiting is not enough: it may still be writing its commit.)
    while ((await db.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [waiting[0].pid])).rows.length > 0) {
      await new Promise((resolve) => setImmediate(resolve))
    }
    const committed = await db.query('SELECT count(*)::int AS n FROM lost_lease_commits')
    assert.equal(committed.rows[0].n, 1, 'the lease was committed after its call had failed')
  } finally {
    await gate.end()
    await db.query(`DROP TRIGGER lost_lease_wait ON quota_copy_leases; DROP FUNCTION lost_lease_wait(); DROP TABLE lost_lease_commits;
                    DROP TRIGGER lost_lease_deleted ON quota_copy_leases; DROP FUNCTION lost_lease_deleted(); DROP TABLE lost_lease_deletes`)
  }
  // The default reservation TTL (an hour) bounds the lease: a lease nobody gives back makes
  // this retry wait that long (the test's timeout fails it first).
  const copied = await quota.copyProject(user, source, target)
  assert.equal(copied.copiedBytes, 3000)
  assert.equal((await quotaCounters(db, user)).used, 3000, 'the copy counted once')
  assert.equal((await db.query('SELECT count(*)::int AS n FROM quota_copy_leases WHERE user_id = $1', [user])).rows[0].n, 0, 'leases given back')
})

test('without pooler mode, PgBouncer refuses the login and the error says what to do', async () => {
  const error = await rejection(client(transaction.url(db.name, { pooler: false })).checkQuota('pool_x', 1))
  assert.equal(error.code, 'DB_UNAVAILABLE')
  assert.match(error.message, /unsupported startup parameter: options/)
  assert.match(error.message, /pgbouncer=true/)
})

test('named prepared statements are what breaks behind a transaction pooler, and pooler mode sends none', async () => {
  // A pooler told to let the login through: the statement cache alone then fails most calls.
  const lax = await startPgBouncer({ server, poolMode: 'transaction', defaultPoolSize: 4, extra: 'ignore_startup_parameters = options', tag: 'pgb-lax' })
  try {
    const cached = client(lax.url(db.name, { pooler: false }), { poolSize: 16 })
    const user = 'pool_lax'
    const project = await insertProject(db, user)
    let failures = []
    // Whether a statement lands on the server that prepared it depends on timing: a few rounds.
    // Calls that each take a connection of their own (checkQuota and recordUpload calls made
    // together share one batch, and so one connection).
    for (let round = 0; round < 30 && failures.length === 0; round++) {
      const results = await Promise.allSettled(
        Array.from({ length: 200 }, (_, i) => (i % 2 ? cached.getUsage(user, { projects: true }) : cached.allocateProjectPath(user, project))),
      )
      failures = results.filter((r) => r.status === 'rejected').map((r) => r.reason.message)
    }
    assert.ok(failures.length > 0, 'named statements through a transaction pooler should have failed')
    assert.match(failures[0], /prepared statement "s\d+" (does not exist|already exists)/)
    await mixedLoad(client(lax.url(db.name)), 'lax')
  } finally {
    await lax.stop()
  }
})

test('pooler mode: statementTimeoutMs cancels a blocked statement, and the SET LOCAL does not leak to other clients', async () => {
  const user = 'pool_timeout'
  const project = await insertProject(db, user)
  const quota = client(transaction.url(db.name), { statementTimeoutMs: 300 })
  await quota.recordUpload(user, project, 1000, { uploadId: 'first' })
  const blocker = new pg.Client({ connectionString: db.directUrl })
  await blocker.connect()
  try {
    await blocker.query('BEGIN')
    await blocker.query('SELECT 1 FROM user_quotas WHERE user_id = $1 FOR UPDATE', [user])
    const blocked = await Promise.allSettled([
      quota.recordUpload(user, project, 1000, { uploadId: 'blocked' }),
      quota.recordDeletion(user, project, 10, { deletionId: 'blocked-del' }),
    ])
    for (const r of blocked) {
      assert.equal(r.status, 'rejected')
      assert.equal(r.reason.code, 'DB_TIMEOUT', r.reason.message)
    }
  } finally {
    await blocker.query('ROLLBACK')
    await blocker.end()
  }
  // Server connections the client used are shared through the pooler: none keeps the timeout.
  const others = await Promise.all(
    Array.from({ length: 4 }, async () => {
      const other = new pg.Client({ connectionString: transaction.url(db.name, { pooler: false }) })
      await other.connect()
      return other
    }),
  )
  try {
    const seen = await Promise.all(others.map((o) => o.query('SHOW statement_timeout')))
    assert.deepEqual(
      seen.map((r) => r.rows[0].statement_timeout),
      others.map(() => '0'),
    )
  } finally {
    await Promise.all(others.map((o) => o.end()))
  }
  assert.equal((await quotaCounters(db, user)).used, 1000, 'nothing written by the cancelled calls')
})

test('max_client_conn reached: DB_UNAVAILABLE with the pooler\'s own message', async () => {
  const tight = await startPgBouncer({ server, poolMode: 'transaction', maxClientConn: 2, tag: 'pgb-tight' })
  const holders = []
  try {
    for (let i = 0; i < 2; i++) {
      const holder = new pg.Client({ connectionString: tight.url(db.name, { pooler: false }) })
      await holder.connect()
      holders.push(holder)
    }
    const error = await rejection(client(tight.url(db.name)).checkQuota('pool_full', 1))
    assert.equal(error.code, 'DB_UNAVAILABLE')
    assert.match(error.message, /no more connections allowed \(max_client_conn\)/)
  } finally {
    await Promise.all(holders.map((h) => h.end()))
    await tight.stop()
  }
})

test('a pooler restart mid-use: the next calls reconnect', async () => {
  const bouncer = await startPgBouncer({ server, poolMode: 'transaction', tag: 'pgb-restart' })
  const quota = client(bouncer.url(db.name))
  const user = 'pool_restart'
  const project = await insertProject(db, user)
  await Promise.all(Array.from({ length: 8 }, (_, i) => quota.recordUpload(user, project, 10, { uploadId: `before-${i}` })))
  await bouncer.restart()
  // The pooled connections were cut while idle: they are replaced, not handed out to fail.
  await Promise.all(Array.from({ length: 8 }, (_, i) => quota.recordUpload(user, project, 10, { uploadId: `after-${i}` })))
  assert.deepEqual(await quotaCounters(db, user), { used: 160, reserved: 0, ledger: 160 })
  await bouncer.stop()
})
