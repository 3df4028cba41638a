// The batched backfill on an existing app: with the app writing throughout, after a crash
// (SIGKILL of the CLI mid-run), and what its numbers are before it is done.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { randomUUID } from 'node:crypto'
import { createClient } from '../index.js'
import { createTestDatabase, MIGRATION_VERSIONS } from './helpers/db.mjs'

process.env.STORAGE_QUOTA_LOG = 'off' // lock retries are logged; this file is about data
const CLI = fileURLToPath(new URL('../bin/storage-quota.js', import.meta.url))
const PROJECTS = 12_000 // above the 10,000 that migrate() backfills by itself
const TB = 1024 ** 4

/** An app's table: deterministic ids, 3,000 owners, sizes (some NULL), and 3 owners storage-quota cannot use. */
async function appDatabase(tag, { ownerIndex = true } = {}) {
  const db = await createTestDatabase(tag)
  await db.query(`
    CREATE TABLE projects (id uuid PRIMARY KEY, user_id text, name text NOT NULL DEFAULT '', size_bytes bigint);
    ${ownerIndex ? 'CREATE INDEX projects_user_id_idx ON projects (user_id);' : ''}
    INSERT INTO projects (id, user_id, name, size_bytes)
    SELECT md5('p' || i)::uuid,
           CASE WHEN i % 997 = 0 THEN 'bad|owner' || (i % 3) ELSE 'user_' || (i % 3000) END,
           'p' || i,
           CASE WHEN i % 5 = 0 THEN NULL ELSE (i * 7919) % 1000000 END
      FROM generate_series(1, ${PROJECTS}) i;
    CREATE TABLE original AS SELECT * FROM projects;`)
  return db
}

/** What each user must end with: the sizes of their original projects, plus what the test charged. */
async function expectedUsage(db, charged = new Map()) {
  const { rows } = await db.query(
    `SELECT user_id, coalesce(sum(greatest(size_bytes, 0)), 0)::float8 AS bytes FROM original
      WHERE user_id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$' GROUP BY user_id`,
  )
  const expected = new Map(rows.map((r) => [r.user_id, r.bytes]))
  for (const [user, bytes] of charged) expected.set(user, (expected.get(user) ?? 0) + bytes)
  return expected
}

/** The end state the backfill guarantees, checked in full; returns it for comparisons. */
async function assertCovered(db, expected) {
  // Paths come on first use: a project has at most one record, linked, under its owner's key.
  const { rows: perProject } = await db.query(
    `SELECT p.id, p.user_id, count(sp.id)::int AS paths, bool_and(p.storage_path_id = sp.id) AS linked,
            bool_and(sp.key = p.user_id || '/' || p.id || '/') AS keyed
       FROM projects p LEFT JOIN project_storage_paths sp ON sp.project_id = p.id::text
      GROUP BY p.id, p.user_id`,
  )
  const valid = /^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/
  for (const row of perProject) {
    if (valid.test(row.user_id ?? '')) {
      assert.ok(row.paths <= 1, `project ${row.id} has ${row.paths} path records`)
      if (row.paths === 1) {
        assert.equal(row.linked, true, `project ${row.id} is not linked to its path`)
        assert.equal(row.keyed, true)
      }
    } else {
      assert.equal(row.paths, 0, `project ${row.id} of owner ${row.user_id} got a path`)
    }
  }
  const { rows: quotas } = await db.query(
    `SELECT q.user_id, q.used_bytes::float8 AS used, q.seeded,
            (SELECT coalesce(sum(bytes), 0)::float8 FROM quota_ledger l WHERE l.user_id = q.user_id) AS ledger
       FROM user_quotas q ORDER BY q.user_id`,
  )
  for (const q of quotas) {
    assert.equal(q.seeded, true, `${q.user_id} not seeded`)
    assert.equal(q.used, q.ledger, `${q.user_id}: counter ${q.used} vs ledger ${q.ledger}`)
    assert.equal(q.used, expected.get(q.user_id) ?? 0, `${q.user_id}: used ${q.used}`)
  }
  for (const [user, bytes] of expected) {
    if (bytes > 0) assert.ok(quotas.some((q) => q.user_id === user), `${user} has no quota row`)
  }
  // Every sized project of a usable owner has exactly one baseline share, of its size.
  const { rows: shares } = await db.query(
    `SELECT o.id::text AS id, o.user_id, greatest(o.size_bytes, 0)::float8 AS size, count(s.key)::int AS n,
            sum(s.value::bigint)::float8 AS bytes
       FROM original o
       LEFT JOIN (SELECT l.user_id, e.key, e.value FROM quota_ledger l
                   CROSS JOIN LATERAL jsonb_each_text(l.baseline_projects) e WHERE l.kind = 'baseline') s
         ON s.user_id = o.user_id AND s.key = o.id::text
      WHERE o.size_bytes > 0 AND o.user_id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$'
      GROUP BY o.id, o.user_id, o.size_bytes`,
  )
  for (const s of shares) {
    assert.equal(s.n, 1, `project ${s.id} has ${s.n} baseline shares`)
    assert.equal(s.bytes, s.size, `project ${s.id}: share ${s.bytes} vs size ${s.size}`)
  }
  const extra = await db.query(
    `SELECT count(*)::int AS n FROM quota_ledger l CROSS JOIN LATERAL jsonb_object_keys(l.baseline_projects) k`,
  )
  assert.equal(extra.rows[0].n, shares.length, 'no baseline share for any other project')
  // Every project counter equals its ledger (its entries and its baseline share).
  const drift = await db.query(
    `SELECT u.user_id, u.project_id, u.used_bytes::float8 AS counter,
            storage_quota_project_ledger_bytes(u.user_id, u.project_id)::float8 AS ledger
       FROM quota_project_usage u WHERE u.used_bytes <> storage_quota_project_ledger_bytes(u.user_id, u.project_id)`,
  )
  assert.deepEqual(drift.rows, [], 'project counters equal their ledger')
  const invalid = await db.query(`SELECT conname FROM pg_constraint WHERE NOT convalidated`)
  assert.deepEqual(invalid.rows, [], 'every foreign key validated')
  const state = await db.query(
    `SELECT p.id, p.user_id, sp.key, sp.path, q.used_bytes::text AS used,
            (SELECT u.used_bytes::text FROM quota_project_usage u WHERE u.user_id = p.user_id AND u.project_id = p.id::text) AS project_used
       FROM projects p LEFT JOIN project_storage_paths sp ON sp.project_id = p.id::text
       LEFT JOIN user_quotas q ON q.user_id = p.user_id ORDER BY p.id`,
  )
  return state.rows
}

test('backfill while the app inserts, updates, deletes, charges and reads: each owner seeded once, every number right throughout', async () => {
  const db = await appDatabase('bf_live')
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: TB, logger: false })
  try {
    const migrated = await client.migrate()
    assert.deepEqual(migrated.applied, MIGRATION_VERSIONS)
    assert.equal(migrated.backfill.done, false, 'a large app is left to the backfill step')

    const charged = new Map()
    const expected = await expectedUsage(db)
    const mismatches = []
    let stop = false
    let inserted = 0
    let uploads = 0
    let reads = 0
    const app = (async () => {
      for (let i = 0; !stop; i++) {
        // New projects (empty, as apps create them) for known and for brand-new owners.
        const owner = i % 3 === 0 ? `user_new${i}` : `user_${(i * 37) % 3000}`
        const id = randomUUID()
        await db.query('INSERT INTO projects (id, user_id, name, size_bytes) VALUES ($1, $2, $3, 0)', [id, owner, `new ${i}`])
        inserted += 1
        if (i % 4 === 0) await client.registerProject(owner, id)
        await db.query(`UPDATE projects SET name = name || '.' WHERE id = md5('p' || $1::text)::uuid`, [(i * 13) % PROJECTS + 1])
        if (i % 5 === 0) {
          const gone = randomUUID()
          await db.query('INSERT INTO projects (id, user_id) VALUES ($1, $2)', [gone, owner])
          await db.query('DELETE FROM projects WHERE id = $1', [gone])
        }
        // Charges and reads for original owners: seeded lazily when the backfill has not got there.
        const user = `user_${(i * 71) % 3000}`
        const project = (await db.query('SELECT id FROM original WHERE user_id = $1 LIMIT 1', [user])).rows[0].id
        if (i % 2 === 0) {
          await client.recordUpload(user, project, 1000 + i, { uploadId: `live-${i}` })
          charged.set(user, (charged.get(user) ?? 0) + 1000 + i)
          expected.set(user, (expected.get(user) ?? 0) + 1000 + i)
          uploads += 1
        }
        if (i % 3 === 1) await client.allocateProjectPath(user, project)
        const check = await client.checkQuota(user, 1)
        reads += 1
        if (check.usedBytes !== (expected.get(user) ?? 0)) mismatches.push({ user, read: check.usedBytes, expected: expected.get(user) })
      }
    })()
    // The whole backfill with the app writing throughout.
    let done = await client.backfill({ batchSize: 100 })
    stop = true
    await app
    // Owners the app created behind the cursor are seeded on first use; a second run is a no-op.
    done = await client.backfill({ batchSize: 500 })
    assert.equal(done.done, true)
    assert.ok(inserted >= 20 && uploads >= 10 && reads >= 20, `the app kept working: ${inserted} inserts, ${uploads} uploads, ${reads} reads`)
    assert.deepEqual(mismatches, [], 'every read during the backfill saw the right usage')
    assert.equal(done.skippedProjects, 12)
    assert.deepEqual(
      done.skippedOwners.map((o) => [o.owner, o.projects]).sort(),
      [['bad|owner0', 4], ['bad|owner1', 4], ['bad|owner2', 4]],
    )
    await assertCovered(db, await expectedUsage(db, charged))
    // Every counter equals its ledger (checked above for all); reconcile agrees for the users
    // charged during the backfill (all 3,000 would take long on a debug build).
    for (const user of charged.keys()) assert.equal((await client.reconcile(user)).driftedUsers, 0)
    // Paths on first use: one record per project however often it is asked for.
    const some = (await db.query(`SELECT id::text, user_id FROM original WHERE user_id ~ '^user_' ORDER BY id LIMIT 50`)).rows
    await Promise.all(some.flatMap((p) => [client.allocateProjectPath(p.user_id, p.id), client.allocateProjectPath(p.user_id, p.id)]))
    await assertCovered(db, await expectedUsage(db, charged))
    const recorded = await db.query(`SELECT count(*)::int AS n FROM project_storage_paths WHERE project_id = ANY($1)`, [some.map((p) => p.id)])
    assert.equal(recorded.rows[0].n, 50)
  } finally {
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

test('a backfill killed mid-run (SIGKILL) resumes to exactly the end state of an uninterrupted one', async () => {
  // No owner index on either: the backfill creates its own, concurrently.
  const reference = await appDatabase('bf_ref', { ownerIndex: false })
  const crashed = await appDatabase('bf_crash', { ownerIndex: false })
  for (const db of [reference, crashed]) {
    const { code, stderr } = await finished(cli(db, ['migrate', '--no-backfill']))
    assert.equal(code, 0, stderr)
  }
  const whole = await finished(cli(reference, ['backfill', '--batch-size', '300']))
  assert.equal(whole.code, 0, whole.stderr)

  const child = cli(crashed, ['backfill', '--batch-size', '300'])
  const outcome = finished(child)
  // Kill it once a few batches have committed, whatever it is doing at that moment.
  for (;;) {
    const { rows } = await crashed.query('SELECT scanned FROM storage_quota_backfill')
    if (rows[0].scanned >= 3000) break
    await new Promise((resolve) => setImmediate(resolve))
  }
  child.kill('SIGKILL')
  const killed = await outcome
  assert.equal(killed.signal, 'SIGKILL')
  const mid = await crashed.query(
    `SELECT phase, scanned::int, (SELECT count(*)::int FROM user_quotas) AS users FROM storage_quota_backfill`,
  )
  assert.equal(mid.rows[0].phase, 'scan', 'killed before the end')
  assert.ok(mid.rows[0].users < 3000)

  const resumed = await finished(cli(crashed, ['backfill', '--batch-size', '300']))
  assert.equal(resumed.code, 0, resumed.stderr)
  assert.match(resumed.stdout, /backfill done: \d[\d,]* projects scanned, [\d,]+ baselines, [\d,]+ users seeded, 12 projects skipped in [\d.]+ s/)
  // Not a terminal: plain progress lines, the root being recorded, the skipped owners by name.
  assert.match(resumed.stderr, new RegExp(`project paths go under ${crashed.storageRoot}`))
  assert.match(resumed.stderr, /^backfill: 100\.0% {2}[\d,]+\/[\d,]+ done {2}[\d,]+\/s {2}ETA 0:00$/m)
  assert.match(resumed.stderr, /warning: 12 project\(s\) of 3 owner\(s\) whose ids cannot be used for paths .*"bad\|owner0" \(4\)/)
  assert.doesNotMatch(resumed.stderr, /\r|\x1b/, 'no terminal control characters in a log')
  const expected = await expectedUsage(reference)
  const referenceState = await assertCovered(reference, expected)
  const crashedState = await assertCovered(crashed, expected)
  // Same projects, keys, paths (up to the root) and numbers.
  const strip = (rows, root) => rows.map((r) => ({ ...r, path: r.path?.replace(root, '<root>') }))
  assert.deepEqual(strip(crashedState, crashed.storageRoot), strip(referenceState, reference.storageRoot))
  const index = await crashed.query(`SELECT 1 FROM pg_indexes WHERE indexname = 'storage_quota_projects_owner_idx'`)
  assert.equal(index.rows.length, 1, 'the owner index was created')
})

test('two backfills started at once take turns: each project once, every number right', async () => {
  const db = await appDatabase('bf_twice')
  const { code, stderr } = await finished(cli(db, ['migrate', '--no-backfill']))
  assert.equal(code, 0, stderr)
  const [a, b] = await Promise.all([
    finished(cli(db, ['backfill', '--batch-size', '700'])),
    finished(cli(db, ['backfill', '--batch-size', '500'])),
  ])
  assert.equal(a.code, 0, a.stderr)
  assert.equal(b.code, 0, b.stderr)
  await assertCovered(db, await expectedUsage(db))
  const state = await db.query('SELECT skipped_projects::int, scanned::int, users_seeded::int FROM storage_quota_backfill')
  assert.deepEqual(state.rows[0], { skipped_projects: 12, scanned: PROJECTS, users_seeded: 3000 }, 'no batch counted twice')
})

test('until the backfill reaches a user, reads count their projects; the first charge seeds them exactly once', async () => {
  const db = await appDatabase('bf_lazy')
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, logger: false })
  try {
    const { backfill } = await client.migrate()
    assert.equal(backfill.done, false)
    const expected = await expectedUsage(db)
    const user = 'user_42'
    const before = await client.getUsage(user)
    assert.equal(before.usedBytes, expected.get(user))
    const rows = await db.query('SELECT count(*)::int AS n FROM user_quotas')
    assert.equal(rows.rows[0].n, 0, 'reading wrote nothing')
    const project = (await db.query('SELECT id FROM original WHERE user_id = $1 LIMIT 1', [user])).rows[0].id
    const upload = await client.recordUpload(user, project, 10, { uploadId: 'first' })
    assert.equal(upload.usedBytes, expected.get(user) + 10)
    // A project the app created after the user was seeded, registered with its size: counted once.
    const later = randomUUID()
    await db.query('INSERT INTO projects (id, user_id, size_bytes) VALUES ($1, $2, 500)', [later, user])
    const registered = await client.registerProject(user, later, { sizeBytes: 500 })
    assert.equal(registered.usedBytes, expected.get(user) + 510)
    // A user first seen through registerProject of a project the app stored with its size: the
    // size is their project's baseline, counted once, not again as the registered size.
    const fresh = 'user_43'
    const sized = randomUUID()
    await db.query('INSERT INTO projects (id, user_id, size_bytes) VALUES ($1, $2, 700)', [sized, fresh])
    assert.equal((await client.checkQuota(fresh, 1)).usedBytes, expected.get(fresh) + 700)
    const first = await client.registerProject(fresh, sized, { sizeBytes: 700 })
    assert.equal(first.usedBytes, expected.get(fresh) + 700)
    const done = await client.backfill({ batchSize: 5000 })
    assert.equal(done.done, true)
    assert.equal((await client.getUsage(user)).usedBytes, expected.get(user) + 510, 'the backfill did not count them again')
    assert.equal((await client.getUsage(fresh)).usedBytes, expected.get(fresh) + 700)
  } finally {
    await client.close()
  }
})

test('a backfilled project gives its baseline back exactly once: removeProject, a retry, the delete trigger, reconcile', async () => {
  const db = await appDatabase('bf_release')
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: TB, logger: false })
  try {
    await client.migrate()
    assert.equal((await client.backfill({ batchSize: 4000 })).done, true)
    const expected = await expectedUsage(db)
    const sized = `SELECT id::text, size_bytes::float8 AS size FROM original WHERE user_id = $1 AND size_bytes > 0 ORDER BY id`
    // removeProject, twice: the share once.
    const [a, b] = (await db.query(sized, ['user_7'])).rows
    const first = await client.removeProject('user_7', a.id)
    assert.equal(first.usedBytes, expected.get('user_7') - a.size)
    const again = await client.removeProject('user_7', a.id)
    assert.equal(again.usedBytes, expected.get('user_7') - a.size)
    // The app deletes a project behind our back, with the README's trigger: its share comes back.
    await db.query(`CREATE TRIGGER projects_storage_quota AFTER DELETE ON projects FOR EACH ROW EXECUTE FUNCTION storage_quota_project_deleted('id')`)
    await db.query('DELETE FROM projects WHERE id = $1', [b.id])
    assert.equal((await client.getUsage('user_7')).usedBytes, expected.get('user_7') - a.size - b.size)
    // Without the trigger: reconcile finds the deleted project and gives its share back, once.
    const [c] = (await db.query(sized, ['user_8'])).rows
    await db.query('DROP TRIGGER projects_storage_quota ON projects')
    await db.query('DELETE FROM projects WHERE id = $1', [c.id])
    await client.reconcile('user_8', { fix: true })
    await client.reconcile('user_8', { fix: true })
    assert.equal((await client.getUsage('user_8')).usedBytes, expected.get('user_8') - c.size)
    for (const user of ['user_7', 'user_8', 'user_9']) assert.equal((await client.reconcile(user)).driftedUsers, 0, user)
    // pruneHistory keeps the baseline entry (one per user, with every project's share).
    await db.query(`UPDATE quota_ledger SET created_at = now() - interval '1000 days'`)
    await client.pruneHistory()
    for (const user of ['user_7', 'user_9']) assert.equal((await client.reconcile(user)).driftedUsers, 0, user)
    const share = await db.query(`SELECT count(*)::int AS n FROM quota_ledger WHERE user_id = 'user_9' AND baseline_projects IS NOT NULL`)
    assert.equal(share.rows[0].n, 1)
  } finally {
    await client.close()
  }
})
