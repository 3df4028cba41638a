// Upgrading a database that storage-quota 0.1.0 left (0001's first release and 0002) whose own
// tables are big: the tables above the in-place limit are prepared online (shadow columns filled
// in batches, indexes built concurrently, counters filled up to an exact boundary) while 0.1.0
// code keeps writing, then the migrations only swap names. The limit is set low here
// (STORAGE_QUOTA_ONLINE_MIGRATION_ROWS) so the tables stay small.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { spawn } from 'node:child_process'
import { createHash, randomUUID } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { createClient } from '../index.js'
import { createTestDatabase, MIGRATION_VERSIONS, rejection, TEST_POOLER } from './helpers/db.mjs'

const ROWS = 60
process.env.STORAGE_QUOTA_ONLINE_MIGRATION_ROWS = String(ROWS)
process.env.STORAGE_QUOTA_LOG = 'off'
const CLI = fileURLToPath(new URL('../bin/storage-quota.js', import.meta.url))
const fixture = await readFile(new URL('./fixtures/existing-app.sql', import.meta.url), 'utf8')
const firstRelease0001 = await readFile(new URL('./fixtures/0001_storage_quota.first-release.up.sql', import.meta.url), 'utf8')
// 0002 as 0.1.0 applied it (its text gained an up-front LOCK TABLE since; the old checksum is accepted).
const migration0002 = await readFile(new URL('./fixtures/0002_quota_lifecycle.first-release.up.sql', import.meta.url), 'utf8')
const sha256 = (text) => createHash('sha256').update(text).digest('hex')
const TABLES = ['quota_ledger', 'project_storage_paths', 'quota_reservations', 'simulation_jobs']
const AFTER_0002 = MIGRATION_VERSIONS.filter((v) => v > 2)

/**
 * A database as 0.1.0 left it, every table of TABLES above ROWS rows, and `expected_ids` (a
 * table of the test's own): what each row's project id must read as text at the end.
 */
async function releasedDatabase(tag) {
  const db = await createTestDatabase(tag)
  await db.query(fixture)
  await db.query(`BEGIN; SET LOCAL storage_quota.storage_root = '${db.storageRoot}'; ${firstRelease0001}
    CREATE TABLE storage_quota_migrations (version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now());
    INSERT INTO storage_quota_migrations (version, name, checksum) VALUES (1, 'storage_quota', '${sha256(firstRelease0001)}');
    COMMIT`)
  await db.query(`BEGIN; ${migration0002}
    INSERT INTO storage_quota_migrations (version, name, checksum) VALUES (2, 'quota_lifecycle', '${sha256(migration0002)}'); COMMIT`)
  const n = ROWS * 2
  await db.query(`
    INSERT INTO user_quotas (user_id, limit_bytes) VALUES ('user_big', 1e12), ('user_w', 1e12);
    INSERT INTO projects (id, user_id, name) SELECT md5('big' || i)::uuid, 'user_big', 'big ' || i FROM generate_series(1, ${n}) i;
    INSERT INTO project_storage_paths (project_id, user_id, quota_id, key, path)
    SELECT p.id, 'user_big', q.id, 'user_big/' || p.id || '/', '${db.storageRoot}/user_big/' || p.id || '/'
      FROM projects p, user_quotas q WHERE p.user_id = 'user_big' AND q.user_id = 'user_big';
    INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes)
    SELECT 'user_big', CASE WHEN i % 10 = 0 THEN NULL ELSE md5('big' || (i % ${n} + 1))::uuid END, 'seed-' || i, 'upload', i
      FROM generate_series(1, ${n * 3}) i;
    INSERT INTO quota_reservations (id, user_id, project_id, bytes, status, committed_bytes, expires_at, settled_at)
    SELECT md5('res' || i)::uuid, 'user_big', md5('big' || i)::uuid, i, 'committed', i, now() + interval '1 hour', now()
      FROM generate_series(1, ${n}) i;
    INSERT INTO simulation_jobs (project_id, user_id) SELECT md5('big' || i)::uuid, 'user_big' FROM generate_series(1, ${n}) i;
    CREATE TABLE expected_ids (tbl text NOT NULL, row_id text NOT NULL, project_id text, PRIMARY KEY (tbl, row_id));
    ${TABLES.map((t) => `INSERT INTO expected_ids SELECT '${t}', id::text, project_id::text FROM ${t};`).join('\n')}`)
  return db
}

/**
 * 0.1.0's statements (uuid project ids, untyped parameters), each with `lock_timeout` 5 s (the
 * locks are milliseconds on a quiet machine; the test machine is shared, and the longest waits
 * at scale are measured by bench/upgrade-at-scale.mjs, not here):
 * a new project with its path, a ledger entry (every fifth without a project), a reservation
 * then committed, a simulation job. What each row must read as at the end goes to expected_ids.
 */
async function oldWriter(db) {
  const c = new pg.Client({ connectionString: db.directUrl })
  await c.connect()
  await c.query(`SET lock_timeout = '5s'`)
  const errors = []
  let rounds = 0
  const expect = (table, insert) => `WITH r AS (${insert} RETURNING id::text, project_id::text)
    INSERT INTO expected_ids SELECT '${table}', * FROM r`
  return {
    errors,
    get rounds() {
      return rounds
    },
    async round() {
      rounds += 1
      const project = randomUUID()
      const reservation = randomUUID()
      try {
        await c.query(`INSERT INTO projects (id, user_id, name) VALUES ($1, 'user_w', 'written meanwhile')`, [project])
        await c.query(
          expect('project_storage_paths', `INSERT INTO project_storage_paths (project_id, user_id, quota_id, key, path)
            SELECT $1, 'user_w', q.id, 'user_w/' || $3 || '/', $2 || '/user_w/' || $3 || '/' FROM user_quotas q WHERE q.user_id = 'user_w'`),
          [project, db.storageRoot, project],
        )
        await c.query(
          expect('quota_ledger', `INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes)
            VALUES ('user_w', $1, $2, 'upload', $3)`),
          [rounds % 5 === 0 ? null : project, `w-${randomUUID()}`, rounds],
        )
        await c.query(
          expect('quota_reservations', `INSERT INTO quota_reservations (id, user_id, project_id, bytes, expires_at)
            VALUES ($1, 'user_w', $2, 10, now() + interval '1 hour')`),
          [reservation, project],
        )
        await c.query(`UPDATE quota_reservations SET status = 'committed', committed_bytes = 10, settled_at = now() WHERE id = $1`, [reservation])
        await c.query(expect('simulation_jobs', `INSERT INTO simulation_jobs (project_id, user_id) VALUES ($1, 'user_w')`), [project])
      } catch (error) {
        errors.push(error.message)
      }
    },
    close: () => c.end(),
  }
}

/** A writer of its own running rounds back to back until `stop()`. */
async function backgroundWriter(db) {
  const writer = await oldWriter(db)
  let running = true
  const loop = (async () => {
    while (running) await writer.round()
  })()
  let stopped
  return {
    writer,
    /** Idempotent: the test's `finally` stops it too. */
    stop() {
      running = false
      stopped ??= loop.then(() => writer.close())
      return stopped
    },
  }
}

/** The files that hold each table's rows: a rewrite (ALTER COLUMN TYPE) gives a table a new one. */
async function relfilenodes(db) {
  const { rows } = await db.query(`SELECT relname, relfilenode::text FROM pg_class WHERE relname = ANY($1) ORDER BY relname`, [TABLES])
  return rows
}

/** Every row's project id is the text expected of it; every counter equals its ledger sum. */
async function assertMigratedRight(db) {
  for (const t of TABLES) {
    const { rows } = await db.query(`
      SELECT (SELECT count(*) FROM ${t})::int AS rows,
             (SELECT count(*) FROM expected_ids WHERE tbl = '${t}')::int AS expected,
             (SELECT count(*) FROM ${t} x JOIN expected_ids e ON e.tbl = '${t}' AND e.row_id = x.id::text
               WHERE x.project_id IS NOT DISTINCT FROM e.project_id)::int AS right,
             (SELECT format_type(atttypid, NULL) FROM pg_attribute
               WHERE attrelid = '${t}'::regclass AND attname = 'project_id' AND NOT attisdropped) AS type`)
    assert.equal(rows[0].type, 'text', t)
    assert.equal(rows[0].rows, rows[0].expected, `${t}: rows`)
    assert.equal(rows[0].right, rows[0].rows, `${t}: every project id right`)
  }
  const { rows } = await db.query(`
    SELECT count(*) FILTER (WHERE l.bytes IS DISTINCT FROM u.used_bytes)::int AS wrong, count(*)::int AS counters
      FROM (SELECT user_id, project_id::text AS project_id, sum(bytes)::bigint AS bytes FROM quota_ledger
             WHERE project_id IS NOT NULL GROUP BY 1, 2) l
      FULL JOIN quota_project_usage u USING (user_id, project_id)`)
  assert.equal(rows[0].wrong, 0, 'every counter equals its ledger sum, none missing or extra')
  assert.ok(rows[0].counters > ROWS)
}

/** The schema as the catalog describes it, column order aside (a swapped column comes last). */
async function catalog(db) {
  const { rows } = await db.query(`
    SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
           || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
           || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '') AS d
      FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
       AND c.relname <> 'expected_ids'
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(x.indexrelid) || CASE WHEN x.indisvalid THEN '' ELSE ' INVALID' END
      FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid
     WHERE c.relnamespace = 'public'::regnamespace AND c.relname <> 'expected_ids'
    UNION ALL
    SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid) || ' ' || convalidated
      FROM pg_constraint WHERE connamespace = 'public'::regnamespace AND conrelid <> 'expected_ids'::regclass
    UNION ALL
    SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL
    SELECT 'function ' || proname || '(' || pg_get_function_identity_arguments(oid) || ') ' || md5(prosrc)
      FROM pg_proc WHERE pronamespace = 'public'::regnamespace
    ORDER BY 1`)
  return rows.map((r) => r.d)
}

/** Runs `fn` with the in-place limit set to `rows` (read by the addon at each call). */
async function withLimit(rows, fn) {
  process.env.STORAGE_QUOTA_ONLINE_MIGRATION_ROWS = String(rows)
  try {
    return await fn()
  } finally {
    process.env.STORAGE_QUOTA_ONLINE_MIGRATION_ROWS = String(ROWS)
  }
}

test('from 0.1.0 with big tables: boot migrate() refuses, the preparation runs while 0.1.0 code writes, then the migrations rewrite nothing', async () => {
  const db = await releasedDatabase('onl_up')
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, logger: false })
  const stepper = await oldWriter(db)
  const background = await backgroundWriter(db)
  try {
    const refused = await rejection(client.migrate())
    assert.equal(refused.code, 'MIGRATION_REQUIRED')
    assert.match(refused.message, /0003_hardening .*quota_ledger, project_storage_paths, quota_reservations, simulation_jobs .*more than 60 rows.*npx storage-quota migrate.*Nothing was changed/)
    assert.deepEqual((await client.migrationStatus()).applied.map((m) => m.version), [1, 2])
    const untouched = await db.query(`SELECT count(*)::int AS n FROM pg_attribute WHERE attname = 'project_id_text'`)
    assert.equal(untouched.rows[0].n, 0)

    const files = await relfilenodes(db)
    // 0.1.0 code writes after every step (and the background writer throughout).
    let steps = 0
    const prepared = await client.prepareMigrations({
      batchSize: 25,
      async onProgress() {
        steps += 1
        await stepper.round()
      },
    })
    assert.equal(prepared.done, true)
    assert.deepEqual(prepared.tables.sort(), [...TABLES].sort())
    assert.ok(steps > prepared.tasksTotal, 'the fills took several batches each')
    const indexes = async () =>
      (await db.query(`SELECT indexrelid::int AS oid FROM pg_index WHERE indrelid = ANY($1::regclass[])`, [TABLES])).rows.map((r) => r.oid)
    const before = await indexes()

    const result = await client.migrate()
    assert.deepEqual(result.applied, AFTER_0002)
    await stepper.round()
    await background.stop()

    // The migrations swapped names: no table rewritten, no index built under their locks.
    assert.deepEqual(await relfilenodes(db), files)
    const after = await indexes()
    assert.deepEqual(after.filter((oid) => !before.includes(oid)), [], 'every index was built before migrate(), concurrently')
    assert.deepEqual([...stepper.errors, ...background.writer.errors], [], 'no 0.1.0 statement waited 5 s for a lock, or failed')
    assert.ok(background.writer.rounds > 0)
    await assertMigratedRight(db)
    const left = await db.query(`SELECT count(*)::int AS n FROM storage_quota_meta WHERE key LIKE 'prepare%' OR key = 'usage_prefill'`)
    assert.equal(left.rows[0].n, 0, 'the bookkeeping is gone')

    // The same schema as the in-place path gives (same data, limit above the tables' rows).
    const reference = await releasedDatabase('onl_ref')
    const inPlace = createClient({ databaseUrl: reference.url, storageRoot: reference.storageRoot, logger: false })
    try {
      await withLimit(1_000_000, () => inPlace.migrate())
    } finally {
      await inPlace.close()
    }
    assert.deepEqual(await catalog(db), await catalog(reference))

    // Rolling back 0006 would rewrite the big tables: refused, changing nothing. With the
    // limit raised (the app stopped) it goes, and up again (online) keeps every number.
    const usage = async () => (await db.query(`SELECT user_id, project_id, used_bytes::text FROM quota_project_usage ORDER BY 1, 2`)).rows
    const counters = await usage()
    const down = MIGRATION_VERSIONS.filter((v) => v >= 6)
    const refusedDown = await rejection(client.rollback(down.length))
    assert.equal(refusedDown.code, 'MIGRATION_FAILED')
    assert.match(refusedDown.message, /cannot roll back 0006_project_source online: it rewrites quota_ledger, project_storage_paths, quota_reservations, simulation_jobs .*Nothing was changed/)
    assert.ok((await client.migrationStatus()).applied.some((m) => m.version === 6))
    await withLimit(1_000_000, () => client.rollback(MIGRATION_VERSIONS.filter((v) => v > 2 && v <= 6).length))
    assert.deepEqual((await client.migrationStatus()).applied.map((m) => m.version), [1, 2])
    assert.equal((await rejection(client.migrate())).code, 'MIGRATION_REQUIRED')
    assert.equal((await client.prepareMigrations({ batchSize: 50 })).done, true)
    assert.deepEqual((await client.migrate()).applied, AFTER_0002)
    await assertMigratedRight(db)
    assert.deepEqual(await usage(), counters)
  } finally {
    await background.stop()
    await stepper.close()
    await client.close()
  }
})

function cli(db, args) {
  return spawn(process.execPath, [CLI, ...args, '--database-url', db.url, '--storage-root', db.storageRoot], {
    env: { ...process.env, STORAGE_QUOTA_LOG: 'off' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
}

function finished(child) {
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (c) => (stdout += c))
  child.stderr.on('data', (c) => (stderr += c))
  return new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })))
}

// Behind a transaction pooler the turn between preparations is a lease row, which a killed
// process holds until it expires (10 minutes): the resume would wait that long.
test('storage-quota migrate killed mid-preparation (SIGKILL) resumes to the same end state; 0.1.0 code writes throughout', { skip: TEST_POOLER ? 'the lease of a killed preparation expires after 10 minutes behind a pooler' : false }, async () => {
  const db = await releasedDatabase('onl_crash')
  const files = await relfilenodes(db)
  const background = await backgroundWriter(db)
  try {
    const child = cli(db, ['migrate', '--batch-size', '5'])
    const outcome = finished(child)
    let exited = false
    outcome.then(() => (exited = true))
    // Kill it once the ledger's fill has committed a few batches, whatever it does then.
    for (;;) {
      const { rows } = await db.query(
        `SELECT (value ->> 'rows')::int AS n FROM storage_quota_meta WHERE key = 'prepare_fill:quota_ledger'`,
      )
      if (exited || rows[0]?.n >= 50) break
      await new Promise((resolve) => setImmediate(resolve))
    }
    child.kill('SIGKILL')
    const killed = await outcome
    assert.equal(killed.signal, 'SIGKILL', `killed mid-preparation, not finished: ${killed.stdout}`)
    assert.deepEqual((await db.query('SELECT version FROM storage_quota_migrations ORDER BY 1')).rows.map((r) => r.version), [1, 2])
    const mid = await db.query(`SELECT value FROM storage_quota_meta WHERE key = 'prepare_fill:quota_ledger'`)
    assert.equal(mid.rows[0].value.done, false)
    await background.writer.round()

    const resumed = await finished(cli(db, ['migrate', '--batch-size', '5']))
    assert.equal(resumed.code, 0, resumed.stderr)
    assert.match(resumed.stdout, /preparing quota_ledger, project_storage_paths, quota_reservations, simulation_jobs for the pending migrations online/)
    assert.match(resumed.stdout, /preparation done in [\d.]+ s/)
    assert.match(resumed.stdout, new RegExp(`applied: ${AFTER_0002.join(', ')}`))
    // Not a terminal: plain progress lines.
    assert.match(resumed.stderr, /^prepare: [\d.]+% {2}step \d+\/\d+: /m)
    assert.doesNotMatch(resumed.stderr, /\r|\x1b/)
  } finally {
    await background.stop()
  }
  assert.deepEqual(background.writer.errors, [])
  assert.deepEqual(await relfilenodes(db), files, 'no table was rewritten')
  await assertMigratedRight(db)
})

test('small tables from 0.1.0 take the in-place path: nothing to prepare, boot migrate() applies everything', async () => {
  const db = await releasedDatabase('onl_small')
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, logger: false })
  try {
    await withLimit(1_000_000, async () => {
      const state = await client.migrationPreparation()
      assert.deepEqual({ done: state.done, tasksTotal: state.tasksTotal }, { done: true, tasksTotal: 0 })
      assert.deepEqual((await client.migrate()).applied, AFTER_0002)
    })
    await assertMigratedRight(db)
    const shadow = await db.query(`SELECT count(*)::int AS n FROM pg_attribute WHERE attname = 'project_id_text'`)
    assert.equal(shadow.rows[0].n, 0)
  } finally {
    await client.close()
  }
})
