import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { createClient } from '../index.js'
import { createTestDatabase, MIGRATION_VERSIONS, rejection } from './helpers/db.mjs'

const run = promisify(execFile)
const fixture = await readFile(new URL('./fixtures/existing-app.sql', import.meta.url), 'utf8')

async function schemaDump(db) {
  const { stdout } = await run('pg_dump', ['--schema-only', '--no-owner', '--no-privileges', db.directUrl])
  // pg_dump prints a random \restrict token since 15.14; it is not part of the schema.
  return stdout.replace(/^\\(un)?restrict .*$/gm, '')
}

async function appRows(db) {
  const projects = await db.query(
    'SELECT id, user_id, name, description, size_bytes, created_at, updated_at FROM projects ORDER BY id',
  )
  const files = await db.query('SELECT * FROM project_files ORDER BY id')
  return { projects: projects.rows, files: files.rows }
}

test('on an empty database: creates the schema, records it, and is idempotent', async () => {
  const db = await createTestDatabase('mig_empty')
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
  try {
    const before = await rejection(client.checkQuota('user_a', 1))
    assert.equal(before.code, 'MIGRATION_REQUIRED')

    const first = await client.migrate()
    assert.deepEqual(first.applied, MIGRATION_VERSIONS)
    assert.equal(first.backfill.done, true, 'an empty app is backfilled inside migrate()')
    assert.deepEqual((await client.migrate()).applied, [])
    const status = await client.migrationStatus()
    assert.deepEqual(status.applied.map((m) => m.version), MIGRATION_VERSIONS)
    assert.ok(status.applied[0].appliedAt instanceof Date)
    assert.deepEqual(status.pending, [])

    const { rows } = await db.query(
      `SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name`,
    )
    assert.deepEqual(
      rows.map((r) => r.table_name),
      [
        'project_storage_paths',
        'projects',
        'quota_copy_leases',
        'quota_ledger',
        'quota_limit_changes',
        'quota_project_copies',
        'quota_project_usage',
        'quota_reservations',
        'simulation_jobs',
        'storage_quota_backfill',
        'storage_quota_backfill_skipped',
        'storage_quota_meta',
        'storage_quota_migrations',
        'storage_quota_projects',
        'user_quotas',
      ],
    )
    const column = await db.query(
      `SELECT data_type FROM information_schema.columns WHERE table_name = 'projects' AND column_name = 'storage_path_id'`,
    )
    assert.equal(column.rows[0].data_type, 'uuid')

    assert.deepEqual(await client.rollback(MIGRATION_VERSIONS.length), { reverted: [...MIGRATION_VERSIONS].reverse() })
    const left = await db.query(`SELECT count(*)::int AS n FROM information_schema.tables WHERE table_schema = 'public'`)
    assert.equal(left.rows[0].n, 0, 'rollback on an empty database removes everything it created')
  } finally {
    await client.close()
  }
})

test('on an existing app: quotas for every owner, paths on first use, rows untouched, rollback exact', async () => {
  const db = await createTestDatabase('mig_app')
  await db.query(fixture)
  const schemaBefore = await schemaDump(db)
  const rowsBefore = await appRows(db)
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
  try {
    await client.migrate()
    const schemaUp = await schemaDump(db)

    // Paths come on first use, one per project however often asked.
    const noPaths = await db.query('SELECT count(*)::int AS n FROM project_storage_paths')
    assert.equal(noPaths.rows[0].n, 0, 'the backfill records no path')
    const owned = (await db.query('SELECT id::text, user_id FROM projects ORDER BY id')).rows
    for (const p of owned) {
      await client.allocateProjectPath(p.user_id, p.id)
      await client.allocateProjectPath(p.user_id, p.id)
    }
    const paths = await db.query(
      `SELECT p.id, p.user_id, sp.key, sp.path, sp.backend, p.storage_path_id = sp.id AS linked
         FROM projects p JOIN project_storage_paths sp ON sp.project_id = p.id::text ORDER BY p.id`,
    )
    assert.equal(paths.rows.length, 5, 'every existing project has a storage path')
    for (const row of paths.rows) {
      assert.equal(row.linked, true)
      assert.equal(row.backend, 'local')
      assert.equal(row.key, `${row.user_id}/${row.id}/`)
      assert.equal(row.path, `${db.storageRoot}/${row.user_id}/${row.id}/`)
    }

    const quotas = await db.query('SELECT user_id, limit_bytes::float8, used_bytes::float8 FROM user_quotas ORDER BY user_id')
    assert.deepEqual(quotas.rows, [
      { user_id: 'user_2NNEqL2nrIRdJ194ndJqAHwEfxC', limit_bytes: 1073741824, used_bytes: 10485760 + 52428800 },
      { user_id: 'user_2PqRsTuVwXyZ0123456789abcd', limit_bytes: 1073741824, used_bytes: 734003200 },
      { user_id: 'user_2ZzYyXxWwVvUuTtSsRrQqPpOo', limit_bytes: 1073741824, used_bytes: 1610612736 },
    ])

    // The owner seeded over the default quota can still be read but not charged.
    const over = await client.checkQuota('user_2ZzYyXxWwVvUuTtSsRrQqPpOo', 1)
    assert.equal(over.allowed, false)
    assert.equal(over.percentUsed, 150)

    // The app's own rows are untouched (apart from the new column).
    assert.deepEqual(await appRows(db), rowsBefore)

    await client.rollback(MIGRATION_VERSIONS.length)
    assert.equal(await schemaDump(db), schemaBefore, 'rollback restores the schema exactly')
    assert.deepEqual(await appRows(db), rowsBefore, 'rollback keeps every app row')

    await client.migrate()
    assert.equal(await schemaDump(db), schemaUp, 'up → down → up gives the same schema')
    const again = await db.query('SELECT count(*)::int AS n FROM user_quotas WHERE seeded')
    assert.equal(again.rows[0].n, 3)
    assert.deepEqual(await appRows(db), rowsBefore, 'up → down → up keeps every app row')
    await client.rollback(MIGRATION_VERSIONS.length)
    assert.equal(await schemaDump(db), schemaBefore, 'migrate → rollback → migrate → rollback is stable')
  } finally {
    await client.close()
  }
})

test('refuses a projects table it cannot use, changing nothing', async () => {
  const db = await createTestDatabase('mig_bad')
  await db.query('CREATE TABLE projects (id integer PRIMARY KEY, owner text)')
  const before = await schemaDump(db)
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
  try {
    const error = await rejection(client.migrate())
    assert.equal(error.code, 'MIGRATION_FAILED')
    assert.match(error.message, /"projects" table: column "id" must be uuid, found integer/)
    assert.match(error.message, /Nothing was changed/)
    const status = await client.migrationStatus()
    assert.deepEqual(status.applied, [])
    assert.equal(await schemaDump(db), before, 'not even the tracking table is left behind')
  } finally {
    await client.close()
  }
})

test('two clients migrating at once apply the set once', async () => {
  const db = await createTestDatabase('mig_race')
  await db.query(fixture)
  const clients = Array.from({ length: 4 }, () => createClient({ databaseUrl: db.url, storageRoot: db.storageRoot }))
  try {
    const results = await Promise.all(clients.map((c) => c.migrate()))
    assert.deepEqual(results.flatMap((r) => r.applied).sort((a, b) => a - b), MIGRATION_VERSIONS)
    const seeded = await db.query('SELECT count(*)::int AS n, sum(used_bytes)::float8 AS used FROM user_quotas WHERE seeded')
    assert.deepEqual(seeded.rows[0], { n: 3, used: 10485760 + 52428800 + 734003200 + 1610612736 }, 'each owner seeded once')
  } finally {
    await Promise.all(clients.map((c) => c.close()))
  }
})

test('a migration changed after it was applied is refused', async () => {
  const db = await createTestDatabase('mig_sum')
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
  try {
    await client.migrate()
    await db.query(`UPDATE storage_quota_migrations SET checksum = 'edited' WHERE version = 1`)
    const error = await rejection(client.migrate())
    assert.equal(error.code, 'MIGRATION_FAILED')
    assert.match(error.message, /changed after it was applied/)
    assert.equal((await rejection(client.rollback())).code, 'MIGRATION_FAILED')
  } finally {
    await client.close()
  }
})

test('the database itself refuses usage past the limit, but allows a downgrade', async () => {
  const db = await createTestDatabase('mig_guard')
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
  try {
    await client.migrate()
    await db.query(`INSERT INTO user_quotas (user_id, limit_bytes, used_bytes) VALUES ('user_raw', 1000, 900)`)

    const grow = await rejection(db.query(`UPDATE user_quotas SET used_bytes = 1001 WHERE user_id = 'user_raw'`))
    assert.equal(grow.code, 'SQ001')
    const reserve = await rejection(db.query(`UPDATE user_quotas SET reserved_bytes = 101 WHERE user_id = 'user_raw'`))
    assert.equal(reserve.code, 'SQ001')
    const insert = await rejection(
      db.query(`INSERT INTO user_quotas (user_id, limit_bytes, used_bytes) VALUES ('user_raw2', 10, 11)`),
    )
    assert.equal(insert.code, 'SQ001')
    const negative = await rejection(db.query(`UPDATE user_quotas SET used_bytes = -1 WHERE user_id = 'user_raw'`))
    assert.equal(negative.code, '23514')

    // Plan downgrade: the limit drops below usage; the user is over quota.
    await db.query(`UPDATE user_quotas SET limit_bytes = 500 WHERE user_id = 'user_raw'`)
    // Deletes still work while over quota, and so does any change that does not grow usage.
    await db.query(`UPDATE user_quotas SET used_bytes = 800 WHERE user_id = 'user_raw'`)
    const stillOver = await rejection(db.query(`UPDATE user_quotas SET used_bytes = 801 WHERE user_id = 'user_raw'`))
    assert.equal(stillOver.code, 'SQ001')
    const check = await client.checkQuota('user_raw', 0)
    assert.deepEqual(
      { allowed: check.allowed, used: check.usedBytes, limit: check.limitBytes, remaining: check.remainingBytes },
      { allowed: false, used: 800, limit: 500, remaining: 0 },
    )
  } finally {
    await client.close()
  }
})
