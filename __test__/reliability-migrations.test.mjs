// Migration safety on the existing-app fixture: real processes migrating at once, migrations
// failing half-way (in 0001 and in a later one), the short locks an app relies on while a
// migration waits, and the order a migration takes them in. Up → down → up is in
// migrations.test.mjs.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import pg from 'pg'
import { createClient } from '../index.js'
import { createTestDatabase, MIGRATION_VERSIONS, rejection } from './helpers/db.mjs'

const run = promisify(execFile)
const CLI = fileURLToPath(new URL('../bin/storage-quota.js', import.meta.url))
const fixture = await readFile(new URL('./fixtures/existing-app.sql', import.meta.url), 'utf8')
const migration0001 = await readFile(new URL('../migrations/0001_storage_quota.up.sql', import.meta.url), 'utf8')
const sha256 = (text) => createHash('sha256').update(text).digest('hex')

async function schemaDump(db) {
  const { stdout } = await run('pg_dump', ['--schema-only', '--no-owner', '--no-privileges', db.directUrl])
  return stdout.replace(/^\\(un)?restrict .*$/gm, '')
}

/** Every row of every table in the public schema, as text: "the database as it was". */
async function allRows(db) {
  const { rows: tables } = await db.query(
    `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename`,
  )
  const out = {}
  for (const { tablename } of tables) {
    const { rows } = await db.query(`SELECT row_to_json(t)::text AS r FROM "${tablename}" t ORDER BY 1`)
    out[tablename] = rows.map((r) => r.r)
  }
  return out
}

function cli(db, ...args) {
  return run(process.execPath, [CLI, ...args, '--database-url', db.url, '--storage-root', db.storageRoot], {
    env: { ...process.env, STORAGE_QUOTA_LOG: 'off' },
  })
}

test('three `storage-quota migrate` processes at once end with one applied set; the CLI rolls it back exactly', async () => {
  const db = await createTestDatabase('rel_mig_cli')
  await db.query(fixture)
  const schemaBefore = await schemaDump(db)
  const rowsBefore = await allRows(db)
  const results = await Promise.all([cli(db, 'migrate'), cli(db, 'migrate'), cli(db, 'migrate')])
  const applied = results.flatMap(({ stdout }) => {
    const match = stdout.match(/^applied: (.*)$/m)
    return match ? match[1].split(', ').map(Number) : []
  })
  assert.deepEqual(applied.sort((a, b) => a - b), MIGRATION_VERSIONS, 'each migration applied by exactly one process')
  const recorded = await db.query('SELECT version FROM storage_quota_migrations ORDER BY version')
  assert.deepEqual(recorded.rows.map((r) => r.version), MIGRATION_VERSIONS)
  const counts = await db.query(
    `SELECT (SELECT count(*) FROM project_storage_paths)::int AS paths, (SELECT count(*) FROM user_quotas)::int AS quotas,
            (SELECT count(*) FROM quota_ledger)::int AS ledger`,
  )
  // One baseline entry per owner with sized projects; paths come on first use.
  assert.deepEqual(counts.rows[0], { paths: 0, quotas: 3, ledger: 3 }, 'the backfill ran once')

  const { stdout } = await cli(db, 'rollback', String(MIGRATION_VERSIONS.length))
  assert.match(stdout, new RegExp(`reverted: ${[...MIGRATION_VERSIONS].reverse().join(', ')}`))
  assert.equal(await schemaDump(db), schemaBefore)
  assert.deepEqual(await allRows(db), rowsBefore)
})

/** Fixture plus `extra`, then migrate: must fail with MIGRATION_FAILED and change nothing. */
async function failingMigration(tag, extra) {
  const db = await createTestDatabase(tag)
  await db.query(fixture)
  await db.query(extra)
  const schemaBefore = await schemaDump(db)
  const rowsBefore = await allRows(db)
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
  after(() => client.close())
  const error = await rejection(client.migrate())
  return { db, client, error, schemaBefore, rowsBefore }
}

test('0001 failing half-way (a name already taken by the app) leaves the database as it was', async () => {
  // user_quotas, project_storage_paths and quota_ledger are created (and filled) before this.
  const { db, client, error, schemaBefore, rowsBefore } = await failingMigration(
    'rel_mig_half',
    'CREATE TABLE simulation_jobs (id serial PRIMARY KEY, note text)',
  )
  assert.equal(error.code, 'MIGRATION_FAILED')
  assert.match(error.message, /0001_storage_quota \(up\) failed and was rolled back: relation "simulation_jobs" already exists/)
  assert.equal(await schemaDump(db), schemaBefore)
  assert.deepEqual(await allRows(db), rowsBefore)
  assert.deepEqual((await client.migrationStatus()).applied, [])
})

test('a backfill batch failing (a size it cannot count) writes nothing of it; the schema stays; the backfill resumes once the app fixes it', async () => {
  const { db, client, error, rowsBefore } = await failingMigration(
    'rel_mig_last',
    `ALTER TABLE projects ALTER COLUMN size_bytes TYPE numeric;
     UPDATE projects SET size_bytes = 10000000000000000000 WHERE id = '0b6f1f0e-1c2d-4e5f-8a9b-0c1d2e3f4a55';`,
  )
  assert.equal(error.code, 'DB_ERROR')
  assert.match(error.message, /bigint out of range/)
  // The schema migrations committed, each on its own; the failed batch left no trace.
  assert.deepEqual((await client.migrationStatus()).applied.map((m) => m.version), MIGRATION_VERSIONS)
  const counts = await db.query(
    `SELECT (SELECT count(*) FROM project_storage_paths)::int AS paths, (SELECT count(*) FROM user_quotas)::int AS quotas,
            (SELECT count(*) FROM quota_ledger)::int AS ledger, (SELECT count(*) FROM quota_project_usage)::int AS counters,
            (SELECT scanned::int FROM storage_quota_backfill) AS scanned`,
  )
  assert.deepEqual(counts.rows[0], { paths: 0, quotas: 0, ledger: 0, counters: 0, scanned: 0 })
  const { projects } = await allRows(db)
  assert.deepEqual(
    projects.map((r) => JSON.parse(r)).map(({ storage_path_id, ...row }) => (assert.equal(storage_path_id, null), JSON.stringify(row))),
    rowsBefore.projects,
    'app rows untouched',
  )
  await db.query(`UPDATE projects SET size_bytes = 1610612736 WHERE id = '0b6f1f0e-1c2d-4e5f-8a9b-0c1d2e3f4a55'`)
  const done = await client.backfill()
  assert.equal(done.done, true)
  assert.deepEqual([done.scanned, done.usersSeeded, done.baselines], [5, 3, 4])
  const used = await db.query('SELECT sum(used_bytes)::float8 AS used FROM user_quotas')
  assert.equal(used.rows[0].used, 10485760 + 52428800 + 734003200 + 1610612736)
})

test('a later migration failing leaves the earlier one applied and intact', async () => {
  const { db, client, error, schemaBefore, rowsBefore } = await failingMigration(
    'rel_mig_second',
    'CREATE TABLE quota_limit_changes (id int)',
  )
  assert.equal(error.code, 'MIGRATION_FAILED')
  assert.match(error.message, /0002_quota_lifecycle \(up\) failed/)
  const status = await client.migrationStatus()
  assert.deepEqual(status.applied.map((m) => m.version), [1])
  assert.deepEqual(status.pending.map((m) => m.version), MIGRATION_VERSIONS.slice(1))
  // 0001 works (its tables exist; the backfill waits for 0005), and rolling it back returns
  // exactly to the start: 0002 left nothing behind.
  const paths = await db.query('SELECT count(*)::int AS n FROM project_storage_paths')
  assert.equal(paths.rows[0].n, 0)
  await client.rollback(1)
  assert.equal(await schemaDump(db), schemaBefore)
  assert.deepEqual(await allRows(db), rowsBefore)
})

test('a migration that cannot get its lock gives up within 250 ms and retries; app reads never wait, writes wait less than 1 s', async () => {
  const db = await createTestDatabase('rel_mig_lock')
  await db.query(fixture)
  // A long app transaction that has written to `projects` and not committed yet.
  const app = new pg.Client({ connectionString: db.url })
  app.on('error', () => {})
  await app.connect()
  await app.query('BEGIN')
  await app.query(`UPDATE projects SET name = name WHERE id = '0b6f1f0e-1c2d-4e5f-8a9b-0c1d2e3f4a51'`)

  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, logger: false })
  after(() => client.close())
  const env = process.env.STORAGE_QUOTA_LOG
  process.env.STORAGE_QUOTA_LOG = 'off' // the retries are logged; keep the test quiet
  after(() => (env === undefined ? delete process.env.STORAGE_QUOTA_LOG : (process.env.STORAGE_QUOTA_LOG = env)))
  let settled = false
  const migration = client.migrate().finally(() => (settled = true))

  const other = new pg.Client({ connectionString: db.url })
  other.on('error', () => {})
  await other.connect()
  const reads = []
  const writes = []
  // Sample while the migration queues for its lock, gives up and tries again, several times.
  let waitsSeen = 0
  let lastWaiting = false
  while (waitsSeen < 3 && !settled) {
    const { rows } = await other.query(
      `SELECT count(*)::int AS n FROM pg_locks WHERE NOT granted AND relation = 'projects'::regclass`,
    )
    const waiting = rows[0].n > 0
    if (waiting && !lastWaiting) waitsSeen += 1
    lastWaiting = waiting
    let started = performance.now()
    await other.query('SELECT count(*) FROM projects')
    reads.push(performance.now() - started)
    started = performance.now()
    await other.query(`UPDATE projects SET name = name WHERE id = '0b6f1f0e-1c2d-4e5f-8a9b-0c1d2e3f4a55'`)
    writes.push(performance.now() - started)
  }
  assert.equal(settled, false, 'the migration kept retrying while the app transaction was open')
  await app.query('COMMIT')
  const result = await migration
  await Promise.all([app.end(), other.end()])
  assert.deepEqual(result.applied, MIGRATION_VERSIONS)
  assert.ok(result.lockRetries >= 2, `retried ${result.lockRetries} times`)
  assert.ok(Math.max(...reads) < 1000, `an app read waited ${Math.round(Math.max(...reads))} ms`)
  assert.ok(Math.max(...writes) < 1000, `an app write waited ${Math.round(Math.max(...writes))} ms`)
  assert.equal(result.backfill.done, true)
})

/**
 * How long a lock request for `table` has waited, in ms, and the server's deadlock_timeout
 * (null when nothing waits for it). Only the migration asks for these tables in these tests.
 */
async function tableWait(db, table) {
  const { rows } = await db.query(
    `SELECT (extract(epoch FROM clock_timestamp() - coalesce(l.waitstart, clock_timestamp())) * 1000)::float8 AS ms,
            (extract(epoch FROM current_setting('deadlock_timeout')::interval) * 1000)::float8 AS deadlock_ms
       FROM pg_locks l
      WHERE l.locktype = 'relation' AND NOT l.granted AND l.relation = $1::regclass
        AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
    [table],
  )
  return rows[0] ?? null
}

// Every writer of both tables, since 0001, locks the user's quota row first (FOR UPDATE) and
// then writes the ledger. 0002 changes the ledger and then the quota table's trigger: taken in
// that order, one at a time, under its 5 s lock_timeout, the migration held the ledger while it
// waited for the quota table, an app transaction holding a quota row then waited for the ledger,
// and PostgreSQL's deadlock detector (deadlock_timeout 1 s) failed whichever of the two ran its
// check first: the migration when the app joined within the migration's first second of waiting
// (migrate() does not retry a deadlock), the app's statement when it joined later. Both moments:
for (const late of [false, true]) {
  const moment = late ? 'after the migration has waited past deadlock_timeout' : 'while the migration waits'
  test(`0002 while an app transaction holds a quota row and then writes the ledger (${moment}): no deadlock fails the app's statement or the migration, which applies once the app commits`, async () => {
    const db = await createTestDatabase(late ? 'rel_mig_order_late' : 'rel_mig_order')
    await db.query(fixture)
    // As migrate() leaves a database after 0001, 0002 pending, with one user's quota row.
    await db.query(`BEGIN; ${migration0001}
      CREATE TABLE storage_quota_migrations (version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now());
      INSERT INTO storage_quota_migrations (version, name, checksum) VALUES (1, 'storage_quota', '${sha256(migration0001)}');
      INSERT INTO user_quotas (user_id, limit_bytes) VALUES ('user_w', 1000000);
      COMMIT`)
    const app = new pg.Client({ connectionString: db.directUrl })
    app.on('error', () => {})
    await app.connect()
    after(() => app.end())
    await app.query('BEGIN')
    await app.query(`SELECT 1 FROM user_quotas WHERE user_id = 'user_w' FOR UPDATE`)

    const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, logger: false })
    after(() => client.close())
    const migration = client.migrate().then(
      (result) => ({ result }),
      (error) => ({ error }),
    )
    // The migration asks for the quota table (the app holds a row of it). Go on once it waits
    // (or, late, once it has waited longer than deadlock_timeout), or once it has given up: seen
    // waiting, then no longer, while the app still holds the row.
    let seen = false
    for (;;) {
      const wait = await tableWait(db, 'user_quotas')
      if (wait && (!late || wait.ms > wait.deadlock_ms)) break
      if (!wait && seen) break
      seen ||= wait !== null
      await new Promise((resolve) => setImmediate(resolve))
    }
    const inserted = await app
      .query(`INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes) VALUES ('user_w', NULL, 'w-during-0002', 'upload', 10)`)
      .then(
        () => ({}),
        (error) => ({ error }),
      )
    await app.query(inserted.error ? 'ROLLBACK' : 'COMMIT')
    const migrated = await migration
    assert.deepEqual(
      {
        app: inserted.error ? `${inserted.error.code} ${inserted.error.message}` : 'written',
        migrate: migrated.error ? migrated.error.message : 'applied',
      },
      { app: 'written', migrate: 'applied' },
    )
    assert.deepEqual(migrated.result.applied, MIGRATION_VERSIONS.slice(1))
    // Late, the app joined only once the migration had given up on the quota table: it retried.
    if (late) assert.ok(migrated.result.lockRetries >= 1, `retried ${migrated.result.lockRetries} times`)
    const { rows } = await db.query(`SELECT count(*)::int AS n FROM quota_ledger WHERE idempotency_key = 'w-during-0002'`)
    assert.equal(rows[0].n, 1)
  })
}
