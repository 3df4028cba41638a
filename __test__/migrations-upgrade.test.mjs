// Upgrades and rollbacks with real usage: databases that applied the first release of 0001
// (backfill inside the migration, recorded with its checksum), rollbacks that keep every number
// or refuse saying what to do, and the CLI's --backup.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFile, rm, stat } from 'node:fs/promises'
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { createClient } from '../index.js'
import { createTestDatabase, MIGRATION_VERSIONS, rejection } from './helpers/db.mjs'

process.env.STORAGE_QUOTA_LOG = 'off'
const run = promisify(execFile)
const CLI = fileURLToPath(new URL('../bin/storage-quota.js', import.meta.url))
const fixture = await readFile(new URL('./fixtures/existing-app.sql', import.meta.url), 'utf8')
const firstRelease0001 = await readFile(new URL('./fixtures/0001_storage_quota.first-release.up.sql', import.meta.url), 'utf8')
// 0002 as 0.1.0 applied it (its text gained an up-front LOCK TABLE since; the old checksum is accepted).
const migration0002 = await readFile(new URL('./fixtures/0002_quota_lifecycle.first-release.up.sql', import.meta.url), 'utf8')
const sha256 = (text) => createHash('sha256').update(text).digest('hex')

/** Every user's numbers, every path and link: what must survive. */
async function numbers(db) {
  const quotas = await db.query('SELECT user_id, used_bytes::text, reserved_bytes::text, limit_bytes::text FROM user_quotas ORDER BY user_id')
  const paths = await db.query(
    'SELECT p.id, sp.key, sp.path, p.storage_path_id = sp.id AS linked FROM projects p LEFT JOIN project_storage_paths sp ON sp.project_id::text = p.id::text ORDER BY p.id',
  )
  // Per user and project: entries, and shares of a baseline entry (0009; one entry per project before it).
  const ledger = await db.query(`
    SELECT user_id, project, sum(bytes)::text AS bytes FROM (
      SELECT l.user_id, coalesce(l.project_id::text, '') AS project, l.bytes FROM quota_ledger l
       WHERE jsonb_typeof(to_jsonb(l) -> 'baseline_projects') IS DISTINCT FROM 'object'
      UNION ALL
      SELECT l.user_id, e.key, e.value::bigint FROM quota_ledger l
       CROSS JOIN LATERAL jsonb_each_text(CASE WHEN jsonb_typeof(to_jsonb(l) -> 'baseline_projects') = 'object'
                                               THEN to_jsonb(l) -> 'baseline_projects' ELSE '{}' END) e) x
     GROUP BY 1, 2 ORDER BY 1, 2`)
  return { quotas: quotas.rows, paths: paths.rows, ledger: ledger.rows }
}

test('a database migrated by the first release of 0001 keeps working: its checksum is accepted, 0005 applies, nothing is backfilled twice', async () => {
  const db = await createTestDatabase('upg_legacy')
  await db.query(fixture)
  // As storage-quota 0.1.0 left it: 0001's first text (backfill inside) and 0002, recorded.
  await db.query(`BEGIN; SET LOCAL storage_quota.storage_root = '${db.storageRoot}'; ${firstRelease0001}
    CREATE TABLE storage_quota_migrations (version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now());
    INSERT INTO storage_quota_migrations (version, name, checksum) VALUES (1, 'storage_quota', '${sha256(firstRelease0001)}');
    COMMIT`)
  await db.query(`BEGIN; ${migration0002}
    INSERT INTO storage_quota_migrations (version, name, checksum) VALUES (2, 'quota_lifecycle', '${sha256(migration0002)}'); COMMIT`)
  const before = await numbers(db)
  assert.equal(before.paths.filter((p) => p.linked).length, 5)
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, logger: false })
  try {
    const status = await client.migrationStatus()
    assert.deepEqual(status.applied.map((m) => m.version), [1, 2], 'the old checksum is not "changed after it was applied"')
    const result = await client.migrate()
    assert.deepEqual(result.applied, MIGRATION_VERSIONS.filter((v) => v > 2))
    assert.equal(result.backfill.done, true, 'its backfill happened inside the old 0001')
    assert.equal(result.backfill.scanned, 0, 'and is not done again')
    assert.deepEqual(await numbers(db), before)
    const check = await client.checkQuota('user_2NNEqL2nrIRdJ194ndJqAHwEfxC', 1)
    assert.equal(check.usedBytes, 10485760 + 52428800)
    // A changed text that is neither the current nor the first release is still refused.
    await db.query(`UPDATE storage_quota_migrations SET checksum = 'edited' WHERE version = 1`)
    assert.equal((await rejection(client.migrate())).code, 'MIGRATION_FAILED')
  } finally {
    await client.close()
  }
})

test('up → down → up with usage keeps every number; a rollback that would lose usage refuses, saying what to do', async () => {
  const db = await createTestDatabase('upg_rollback')
  await db.query(fixture)
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, logger: false })
  try {
    await client.migrate()
    const user = 'user_2NNEqL2nrIRdJ194ndJqAHwEfxC'
    const project = '0b6f1f0e-1c2d-4e5f-8a9b-0c1d2e3f4a51'
    await client.recordUpload(user, project, 1234, { uploadId: 'kept' })
    await client.setQuotaLimit(user, 5 * 1024 ** 3)
    const before = await numbers(db)

    // 0005 (and any later migration) goes and comes back: every number, path and link the same.
    const fromFive = MIGRATION_VERSIONS.filter((v) => v >= 5)
    assert.deepEqual(await client.rollback(fromFive.length), { reverted: [...fromFive].reverse() })
    assert.deepEqual(await numbers(db), before)
    const again = await client.migrate()
    assert.deepEqual(again.applied, fromFive)
    assert.equal(again.backfill.done, true)
    assert.deepEqual(await numbers(db), before)

    // A pending reservation: 0002's rollback refuses (it would change reserved bytes).
    const hold = await client.reserveUpload(user, project, 10, { ttlMs: 60_000 })
    await client.rollback(MIGRATION_VERSIONS.filter((v) => v > 2).length) // down to 0002
    const pending = await rejection(client.rollback(1))
    assert.equal(pending.code, 'MIGRATION_FAILED')
    assert.match(pending.message, /1 upload reservations are still pending.*Nothing was changed/)
    await client.cancelUpload(user, hold.reservationId)

    // Uploads and a limit of its own: 0001's rollback refuses, naming the way forward.
    await db.query(`DELETE FROM quota_ledger WHERE kind NOT IN ('upload', 'baseline')`) // 0002's own kinds (the cancel wrote none)
    assert.deepEqual(await client.rollback(1), { reverted: [2] })
    const refused = await rejection(client.rollback(1))
    assert.equal(refused.code, 'MIGRATION_FAILED')
    assert.match(refused.message, /1 usage entries in quota_ledger and 1 users with their own limit would be lost/)
    assert.match(refused.message, /Nothing was changed.*--backup .* --discard-usage/)
    assert.deepEqual((await client.migrationStatus()).applied.map((m) => m.version), [1])
    // With the explicit flag it goes.
    assert.deepEqual(await client.rollback(1, { discardUsage: true }), { reverted: [1] })
  } finally {
    await client.close()
  }
})

function cli(db, args, env = {}) {
  return run(process.execPath, [CLI, ...args, '--database-url', db.url, '--storage-root', db.storageRoot], {
    env: { ...process.env, STORAGE_QUOTA_LOG: 'off', ...env },
  }).then(
    (r) => ({ code: 0, ...r }),
    (e) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  )
}

test('migrate --backup: pg_dump of the tables it changes before any change; a clear error, and no change, without pg_dump', async () => {
  const db = await createTestDatabase('upg_backup')
  await db.query(fixture)
  await db.query(`INSERT INTO projects (user_id, name) VALUES ('auth0|5f7c8ec7', 'not a usable owner id')`)
  const file = join(db.storageRoot, 'before.dump')

  const missing = await cli(db, ['migrate', '--backup', file], { STORAGE_QUOTA_PG_DUMP: '/nonexistent/pg_dump' })
  assert.equal(missing.code, 1)
  assert.match(missing.stderr, /pg_dump was not found on PATH: install the PostgreSQL client tools .*nothing was changed/)
  const none = await db.query(`SELECT to_regclass('storage_quota_migrations') IS NULL AS untouched`)
  assert.equal(none.rows[0].untouched, true)

  const done = await cli(db, ['migrate', '--backup', file])
  assert.equal(done.code, 0, done.stderr)
  assert.match(done.stdout, /backup: .* written to /)
  assert.match(done.stdout, new RegExp(`applied: ${MIGRATION_VERSIONS.join(', ')}`))
  assert.match(done.stdout, /backfill done: 6 projects scanned, 4 baselines, 3 users seeded, 1 projects skipped/)
  assert.match(done.stderr, /warning: 1 project\(s\) of 1 owner\(s\) whose ids cannot be used for paths .*"auth0\|5f7c8ec7" \(1\)/)
  assert.ok((await stat(file)).size > 0)
  const { stdout: listing } = await run('pg_restore', ['--list', file])
  assert.match(listing, /TABLE DATA public projects/)
  const { stdout: projectsSchema } = await run('pg_restore', ['--schema-only', '--table=projects', '--file=-', file])
  assert.match(projectsSchema, /CREATE TABLE public\.projects/)
  assert.doesNotMatch(projectsSchema, /storage_path_id/, 'taken before the migration changed projects')
  await rm(file)
})

test('the demo with DATABASE_URL set works in a throwaway database next to it and leaves the given one untouched', async () => {
  const db = await createTestDatabase('upg_demo')
  await db.query(fixture)
  const tables = async () =>
    (await db.query(`SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1`)).rows.map((r) => r.tablename)
  const tablesBefore = await tables()
  const demo = fileURLToPath(new URL('../examples/demo.mjs', import.meta.url))
  const { stdout } = await run(process.execPath, [demo], {
    env: { ...process.env, DATABASE_URL: db.url, STORAGE_QUOTA_LOG: 'off', STORAGE_ROOT: '' },
  })
  const name = stdout.match(/using a throwaway database (storage_quota_demo_[0-9a-f]+)/)?.[1]
  assert.ok(name, stdout)
  assert.match(stdout, /refused with QUOTA_EXCEEDED/)
  assert.match(stdout, new RegExp(`Dropped the throwaway database ${name}`))
  assert.deepEqual(await tables(), tablesBefore, 'no table added to the given database')
  const left = await db.query('SELECT count(*)::int AS n FROM pg_database WHERE datname = $1', [name])
  assert.equal(left.rows[0].n, 0)
})
