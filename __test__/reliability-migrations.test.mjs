// Migration safety on the existing-app fixture: real processes migrating at once, migrations
// failing half-way (in 0001 and in a later one), and the short locks an app relies on while a
// migration waits. Up → down → up is in migrations.test.mjs.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import pg from 'pg'
import { createClient } from '../index.js'
import { createTestDatabase, MIGRATION_VERSIONS, rejection } from './helpers/db.mjs'

const run = promisify(execFile)
const CLI = fileURLToPath(new URL('../bin/storage-quota.js', import.meta.url))
const fixture = await readFile(new URL('./fixtures/existing-app.sql', import.meta.url), 'utf8')

async function schemaDump(db) {
  const { stdout } = await run('pg_dump', ['--schema-only', '--no-owner', '--no-privileges', db.url])
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
  assert.deepEqual(counts.rows[0], { paths: 5, quotas: 3, ledger: 5 }, 'the data migration ran once')

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

test('0001 failing at its last statement (an app trigger refuses the link update) leaves the database as it was', async () => {
  const { db, error, schemaBefore, rowsBefore } = await failingMigration(
    'rel_mig_last',
    `CREATE FUNCTION app_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN RAISE EXCEPTION 'app rule: projects are read-only today'; END $$;
     CREATE TRIGGER app_refuse BEFORE UPDATE ON projects FOR EACH ROW EXECUTE FUNCTION app_refuse();`,
  )
  assert.equal(error.code, 'MIGRATION_FAILED')
  assert.match(error.message, /app rule: projects are read-only today/)
  assert.equal(await schemaDump(db), schemaBefore)
  assert.deepEqual(await allRows(db), rowsBefore)
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
  // 0001 works, and rolling it back returns exactly to the start: 0002 left nothing behind.
  const paths = await db.query('SELECT count(*)::int AS n FROM project_storage_paths')
  assert.equal(paths.rows[0].n, 5)
  await client.rollback(1)
  assert.equal(await schemaDump(db), schemaBefore)
  assert.deepEqual(await allRows(db), rowsBefore)
})

test('a migration that cannot get its lock gives up within lock_timeout; app reads never wait, writes wait at most that long', async () => {
  const db = await createTestDatabase('rel_mig_lock')
  await db.query(fixture)
  const schemaBefore = await schemaDump(db)
  // A long app transaction that has written to `projects` and not committed yet.
  const app = new pg.Client({ connectionString: db.url })
  app.on('error', () => {})
  await app.connect()
  await app.query('BEGIN')
  await app.query(`UPDATE projects SET name = name WHERE id = '0b6f1f0e-1c2d-4e5f-8a9b-0c1d2e3f4a51'`)

  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
  after(() => client.close())
  const started = performance.now()
  const migration = rejection(client.migrate())
  await new Promise((resolve) => setTimeout(resolve, 500)) // the migration is now queued for its lock

  const reader = new pg.Client({ connectionString: db.url })
  reader.on('error', () => {})
  await reader.connect()
  const readStarted = performance.now()
  await reader.query('SELECT count(*) FROM projects')
  const readMs = performance.now() - readStarted
  assert.ok(readMs < 1000, `an app read waited ${Math.round(readMs)} ms behind the migration`)

  const writeStarted = performance.now()
  await reader.query(`UPDATE projects SET name = name WHERE id = '0b6f1f0e-1c2d-4e5f-8a9b-0c1d2e3f4a55'`)
  const writeMs = performance.now() - writeStarted

  const error = await migration
  const migrationMs = performance.now() - started
  assert.equal(error.code, 'MIGRATION_FAILED')
  assert.match(error.message, /lock timeout/)
  assert.ok(migrationMs >= 4500 && migrationMs < 9000, `gave up after ${Math.round(migrationMs)} ms (lock_timeout 5 s)`)
  assert.ok(writeMs < 6000, `an app write waited ${Math.round(writeMs)} ms`)
  await app.query('COMMIT')
  await Promise.all([app.end(), reader.end()])
  assert.equal(await schemaDump(db), schemaBefore, 'nothing changed')
  // Once the app's transaction is done, the same migration goes through.
  assert.deepEqual(await client.migrate(), { applied: MIGRATION_VERSIONS })
})
