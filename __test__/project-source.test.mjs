// Apps whose projects are not `projects(id uuid, user_id text)`: other table names, uuid, text,
// integer and bigint ids, text and uuid owners (users or Clerk organizations), a schema-qualified
// table, and the standalone registry. Each shape gets the whole lifecycle against its own
// database, with an unrelated `projects` table of the app's sitting next to it, untouched.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { lstat, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { createClient } from '../index.js'
import { createTestDatabase, quotaCounters, rejection } from './helpers/db.mjs'

const run = promisify(execFile)

async function schemaDump(db) {
  const { stdout } = await run('pg_dump', ['--schema-only', '--no-owner', '--no-privileges', db.url])
  return stdout.replace(/^\\(un)?restrict .*$/gm, '')
}

// An app table that is not the project source: storage-quota must neither link to it nor fail on it.
const UNRELATED = `CREATE TABLE projects (id serial PRIMARY KEY, title text NOT NULL);
                   INSERT INTO projects (title) VALUES ('not ours')`

const OWNER_A = 'user_2NNEqL2nrIRdJ194ndJqAHwEfxC'
const OWNER_B = 'user_2PqRsTuVwXyZ0123456789abcd'
const ORG_A = 'org_2abcDEFghiJKLmnoPQRstuVWxyz'
const ORG_B = 'org_2zyxWVUtsrQPOnmlKJIhgfEDcba'
const UUID_A = '8f0e5f7a-3b2c-4d1e-9f8a-7b6c5d4e3f2a'
const UUID_B = '1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d'

const shapes = [
  {
    name: 'uuid ids, text owners, table invoices',
    ddl: `CREATE TABLE invoices (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), owner_id text NOT NULL)`,
    projects: { table: 'invoices', owner: 'owner_id' },
    owners: [OWNER_A, OWNER_B],
    insert: (db, owner) => db.query('INSERT INTO invoices (owner_id) VALUES ($1) RETURNING id::text AS id', [owner]),
    remove: (db, id) => db.query('DELETE FROM invoices WHERE id = $1::uuid', [id]),
  },
  {
    name: 'text ids (slugs)',
    ddl: `CREATE TABLE documents (slug text PRIMARY KEY, user_id text NOT NULL)`,
    projects: { table: 'documents', id: 'slug' },
    owners: [OWNER_A, OWNER_B],
    insert: (db, owner) =>
      db.query(`INSERT INTO documents (slug, user_id) VALUES ('doc-' || md5(random()::text), $1) RETURNING slug AS id`, [owner]),
    remove: (db, id) => db.query('DELETE FROM documents WHERE slug = $1', [id]),
  },
  {
    name: 'integer ids, Clerk organization owners (team quotas)',
    ddl: `CREATE TABLE boards (id serial PRIMARY KEY, org_id text NOT NULL)`,
    projects: { table: 'boards', owner: 'org_id' },
    owners: [ORG_A, ORG_B],
    insert: (db, owner) => db.query('INSERT INTO boards (org_id) VALUES ($1) RETURNING id::text AS id', [owner]),
    remove: (db, id) => db.query('DELETE FROM boards WHERE id = $1::int', [id]),
  },
  {
    name: 'bigint ids past 2^53, uuid owners',
    ddl: `CREATE TABLE assets (id bigint PRIMARY KEY, owner uuid NOT NULL);
          CREATE SEQUENCE assets_ids START 9007199254740993`,
    projects: { table: 'assets', owner: 'owner' },
    owners: [UUID_A, UUID_B],
    insert: (db, owner) =>
      db.query(`INSERT INTO assets (id, owner) VALUES (nextval('assets_ids'), $1) RETURNING id::text AS id`, [owner]),
    remove: (db, id) => db.query('DELETE FROM assets WHERE id = $1::bigint', [id]),
  },
  {
    name: 'a schema-qualified table with varchar columns',
    ddl: `CREATE SCHEMA app;
          CREATE TABLE app.workspaces (key varchar(40) PRIMARY KEY, team varchar(64) NOT NULL)`,
    projects: { table: 'app.workspaces', id: 'key', owner: 'team' },
    owners: [ORG_A, ORG_B],
    insert: (db, owner) =>
      db.query(`INSERT INTO app.workspaces (key, team) VALUES ('ws_' || substr(md5(random()::text), 1, 12), $1) RETURNING key AS id`, [owner]),
    remove: (db, id) => db.query('DELETE FROM app.workspaces WHERE key = $1', [id]),
  },
]

async function lifecycle(db, client, shape, owner, other) {
  const { rows } = await shape.insert(db, owner)
  const id = rows[0].id
  const path = await client.allocateProjectPath(owner, id)
  assert.equal(path.projectId, id)
  assert.equal(path.path, join(db.storageRoot, owner, id) + '/')
  assert.ok((await lstat(path.path)).isDirectory())
  assert.equal((await rejection(client.allocateProjectPath(other, id))).code, 'FORBIDDEN')
  assert.equal((await rejection(client.recordUpload(other, id, 1))).code, 'FORBIDDEN')

  const upload = await client.recordUpload(owner, id, 1000, { uploadId: `u-${id}` })
  assert.equal(upload.usedBytes, 1000)
  assert.equal((await client.recordUpload(owner, id, 1000, { uploadId: `u-${id}` })).duplicate, true)
  const hold = await client.reserveUpload(owner, id, 500)
  assert.equal(hold.projectId, id)
  const committed = await client.commitUpload(owner, hold.reservationId, 400)
  assert.equal(committed.usedBytes, 1400)
  // Many uploads at once go through the batched path (one lookup for several projects).
  await Promise.all(Array.from({ length: 8 }, (_, i) => client.recordUpload(owner, id, 10, { uploadId: `b-${i}-${id}` })))
  const usage = await client.getUsage(owner, { projects: true })
  assert.deepEqual(usage.projects.map((p) => [p.projectId, p.usedBytes]), [[id, 1480]])
  assert.equal((await client.recordDeletion(owner, id, 80, { deletionId: `d-${id}` })).usedBytes, 1400)
  return id
}

for (const shape of shapes) {
  test(`${shape.name}: the whole lifecycle, nothing of the app's changed`, async () => {
    const db = await createTestDatabase('src')
    await db.query(UNRELATED)
    await db.query(shape.ddl)
    const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, projects: shape.projects, logger: false })
    try {
      await client.migrate()
      const [owner, other] = shape.owners
      const id = await lifecycle(db, client, shape, owner, other)
      // A well-formed id of no row of this table.
      const missing = shape.projects.table === 'boards' || shape.projects.table === 'assets' ? '999999' : 'nothing-here'
      assert.equal((await rejection(client.allocateProjectPath(owner, missing))).code, 'NOT_FOUND')

      const removed = await client.removeProject(owner, id)
      assert.equal(removed.releasedBytes, 1400)
      assert.deepEqual(await quotaCounters(db, owner), { used: 0, reserved: 0, ledger: 0 })

      // The unrelated `projects` table is exactly as the app left it: no column, no row, no link.
      const cols = await db.query(`SELECT column_name FROM information_schema.columns WHERE table_name = 'projects' ORDER BY 1`)
      assert.deepEqual(cols.rows.map((r) => r.column_name), ['id', 'title'])
      const fks = await db.query(`SELECT count(*)::int AS n FROM pg_constraint WHERE contype = 'f'`)
      assert.equal(fks.rows[0].n, 1, 'only quota_id → user_quotas: no foreign key into any app table')

      // The lookup is inlined into our statements: an index lookup on the app's id column.
      const plan = await db.query(`SET enable_seqscan = off; EXPLAIN SELECT * FROM storage_quota_project($$${id}$$)`)
      const text = plan[1].rows.map((r) => r['QUERY PLAN']).join('\n')
      assert.match(text, /Index (Only )?Scan/, text)
      assert.doesNotMatch(text, /Function Scan/, text)
    } finally {
      await client.close()
    }
  })
}

test('standalone: the package keeps its own registry; the app has no table for it', async () => {
  const db = await createTestDatabase('src_alone')
  await db.query(UNRELATED)
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, projects: 'standalone', logger: false })
  try {
    await client.migrate()
    assert.equal((await rejection(client.allocateProjectPath(ORG_A, 'report-2026'))).code, 'NOT_FOUND', 'unregistered')
    const registered = await client.registerProject(ORG_A, 'report-2026', { sizeBytes: 100 })
    assert.equal(registered.usedBytes, 100)
    assert.equal((await client.registerProject(ORG_A, 'report-2026')).path.projectId, 'report-2026', 'again: harmless')
    assert.equal((await rejection(client.registerProject(ORG_B, 'report-2026'))).code, 'FORBIDDEN', 'taken')
    assert.equal((await client.recordUpload(ORG_A, 'report-2026', 50)).usedBytes, 150)
    assert.equal((await rejection(client.recordUpload(ORG_B, 'report-2026', 1))).code, 'FORBIDDEN')
    const { rows } = await db.query('SELECT id, user_id FROM storage_quota_projects')
    assert.deepEqual(rows, [{ id: 'report-2026', user_id: ORG_A }])

    await client.removeProject(ORG_A, 'report-2026')
    assert.deepEqual(await quotaCounters(db, ORG_A), { used: 0, reserved: 0, ledger: 0 })
    assert.equal((await db.query('SELECT count(*)::int AS n FROM storage_quota_projects')).rows[0].n, 0)
    assert.equal((await db.query('SELECT count(*)::int AS n FROM project_storage_paths')).rows[0].n, 0)
    // Free again: another owner may register the id now.
    await client.registerProject(ORG_B, 'report-2026')
    const cols = await db.query(`SELECT column_name FROM information_schema.columns WHERE table_name = 'projects' ORDER BY 1`)
    assert.deepEqual(cols.rows.map((r) => r.column_name), ['id', 'title'])
  } finally {
    await client.close()
  }
})

test('a configured table that is missing is refused before anything changes: no look-alike is created', async () => {
  const db = await createTestDatabase('src_missing')
  await db.query('CREATE TABLE invoice (id uuid PRIMARY KEY, owner_id text)')
  const before = await schemaDump(db)
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, projects: { table: 'invoices', owner: 'owner_id' } })
  try {
    const error = await rejection(client.migrate())
    assert.equal(error.code, 'MIGRATION_FAILED')
    assert.match(error.message, /no table "invoices"/)
    assert.match(error.message, /Nothing was changed/)
    assert.equal(await schemaDump(db), before, 'no projects table, no tracking table, nothing')

    for (const [ddl, why] of [
      ['CREATE TABLE invoices (id numeric PRIMARY KEY, owner_id text)', /id column "id" is numeric/],
      ['CREATE TABLE invoices (id uuid PRIMARY KEY, owner_id jsonb)', /owner column "owner_id" is jsonb/],
      ['CREATE TABLE invoices (id uuid, owner_id text)', /no primary key or unique index/],
      ['CREATE TABLE invoices (id uuid PRIMARY KEY)', /has no column "owner_id"/],
    ]) {
      await db.query(ddl)
      const refused = await rejection(client.migrate())
      assert.equal(refused.code, 'MIGRATION_FAILED')
      assert.match(refused.message, why)
      await db.query('DROP TABLE invoices')
    }
    assert.equal(await schemaDump(db), before)
    assert.throws(() => createClient({ projects: { table: 'x; DROP TABLE invoice' } }), { code: 'INVALID_ARGUMENT' })
  } finally {
    await client.close()
  }
})

test('nothing configured, no projects table, but the app has tables: refused, no look-alike', async () => {
  const db = await createTestDatabase('src_lookalike')
  await db.query('CREATE TABLE invoices (id uuid PRIMARY KEY, user_id text); CREATE TABLE users (id text PRIMARY KEY)')
  const before = await schemaDump(db)
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
  try {
    const error = await rejection(client.migrate())
    assert.equal(error.code, 'MIGRATION_FAILED')
    assert.match(error.message, /has tables of its own \(invoices, users\) but none named "projects"/)
    assert.match(error.message, /projects: \{ table, id, owner \}/)
    assert.equal(await schemaDump(db), before, 'no projects table, no tracking table')
    // Named, it goes through, and still creates nothing of the app's.
    const named = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, projects: { table: 'invoices' } })
    await named.migrate()
    await named.close()
    assert.equal((await db.query(`SELECT to_regclass('projects') IS NULL AS none`)).rows[0].none, true)
  } finally {
    await client.close()
  }
})

test('a client configured for another source than the database records is refused', async () => {
  const db = await createTestDatabase('src_mismatch')
  await db.query('CREATE TABLE invoices (id uuid PRIMARY KEY, owner_id text); CREATE TABLE notes (id text PRIMARY KEY, user_id text)')
  const a = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, projects: { table: 'invoices', owner: 'owner_id' } })
  const b = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, projects: { table: 'notes' } })
  try {
    await a.migrate()
    const error = await rejection(b.migrate())
    assert.equal(error.code, 'MIGRATION_FAILED')
    assert.match(error.message, /reads projects from invoices\(id, owner_id\), but this client is configured for notes\(id, user_id\)/)
    assert.deepEqual((await a.migrate()).applied, [])
  } finally {
    await a.close()
    await b.close()
  }
})

test('deleted behind our back: reconcile reports, fix releases the bytes and removes the directory', async () => {
  const db = await createTestDatabase('src_orphan')
  await db.query('CREATE TABLE invoices (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), owner_id text NOT NULL)')
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, projects: { table: 'invoices', owner: 'owner_id' }, logger: false })
  try {
    await client.migrate()
    const insert = async () => (await db.query('INSERT INTO invoices (owner_id) VALUES ($1) RETURNING id::text AS id', [OWNER_A])).rows[0].id
    const [kept, gone] = [await insert(), await insert()]
    for (const id of [kept, gone]) {
      await client.allocateProjectPath(OWNER_A, id)
      await client.recordUpload(OWNER_A, id, 1000)
    }
    await client.reserveUpload(OWNER_A, gone, 300)
    const dir = join(db.storageRoot, OWNER_A, gone)
    await import('node:fs/promises').then((fs) => fs.writeFile(join(dir, 'a.bin'), 'x'.repeat(1000)))

    await db.query('DELETE FROM invoices WHERE id = $1', [gone]) // the app, without removeProject
    const report = await client.reconcile()
    assert.equal(report.deletedProjects, 1)
    const user = report.users.find((u) => u.userId === OWNER_A)
    const found = user.projects.find((p) => p.projectId === gone)
    assert.deepEqual(
      { deleted: found.deleted, ledgerBytes: found.ledgerBytes, releasedBytes: found.releasedBytes, removed: found.removed, path: found.path },
      { deleted: true, ledgerBytes: 1000, releasedBytes: 0, removed: false, path: dir + '/' },
    )
    assert.equal(user.projects.find((p) => p.projectId === kept).deleted, false)
    assert.deepEqual(await quotaCounters(db, OWNER_A), { used: 2000, reserved: 300, ledger: 2000 }, 'a report changes nothing')

    const fixed = await client.reconcile({ fix: true })
    const fixedProject = fixed.users.find((u) => u.userId === OWNER_A).projects.find((p) => p.projectId === gone)
    assert.equal(fixedProject.releasedBytes, 1000)
    assert.equal(fixedProject.removed, true)
    assert.deepEqual(await quotaCounters(db, OWNER_A), { used: 1000, reserved: 0, ledger: 1000 })
    await assert.rejects(lstat(dir), { code: 'ENOENT' })
    assert.ok((await lstat(join(db.storageRoot, OWNER_A, kept))).isDirectory(), 'the live project is untouched')
    const records = await db.query('SELECT project_id FROM project_storage_paths')
    assert.deepEqual(records.rows, [{ project_id: kept }])

    const again = await client.reconcile({ fix: true })
    assert.equal(again.deletedProjects, 0)
    assert.equal(again.driftedUsers, 0, JSON.stringify(again))
  } finally {
    await client.close()
  }
})

test('the trigger recipe releases a deleted project at once', async () => {
  const db = await createTestDatabase('src_trigger')
  await db.query('CREATE TABLE boards (id serial PRIMARY KEY, org_id text NOT NULL)')
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, projects: { table: 'boards', owner: 'org_id' }, logger: false })
  try {
    await client.migrate()
    // The one line from the README:
    await db.query(`CREATE TRIGGER boards_storage_quota AFTER DELETE ON boards FOR EACH ROW EXECUTE FUNCTION storage_quota_project_deleted('id')`)
    const id = (await db.query('INSERT INTO boards (org_id) VALUES ($1) RETURNING id::text AS id', [ORG_A])).rows[0].id
    await client.allocateProjectPath(ORG_A, id)
    await client.recordUpload(ORG_A, id, 700)
    await client.reserveUpload(ORG_A, id, 50)
    await db.query('DELETE FROM boards WHERE id = $1', [id])
    assert.deepEqual(await quotaCounters(db, ORG_A), { used: 0, reserved: 0, ledger: 0 })
    const report = await client.reconcile()
    assert.equal(report.driftedUsers, 0)
    // The directory is still listed (files are removed by reconcile({ fix: true })).
    assert.equal(report.deletedProjects, 1)
    await client.reconcile({ fix: true })
    assert.deepEqual(await readdir(join(db.storageRoot, ORG_A)), [])
  } finally {
    await client.close()
  }
})

test('a database migrated by the first release upgrades: uuid ids become text, nothing lost; rollback restores it', async () => {
  const { readFile } = await import('node:fs/promises')
  const db = await createTestDatabase('src_upgrade')
  await db.query(await readFile(new URL('./fixtures/existing-app.sql', import.meta.url), 'utf8'))
  const firstRelease = await readFile(new URL('./fixtures/0001_storage_quota.first-release.up.sql', import.meta.url), 'utf8')
  // 0001 as the first release applied it, recorded with that release's checksum.
  await db.query(`BEGIN; SET LOCAL storage_quota.storage_root = '${db.storageRoot}'; ${firstRelease};
    CREATE TABLE storage_quota_migrations (version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
    INSERT INTO storage_quota_migrations (version, name, checksum) VALUES (1, 'storage_quota', 'f7eedd58de7e6d20d11e9737422549da92b06320a48ec539fbd7ff06ac1f6514');
    COMMIT`)
  const before = (await db.query(`SELECT project_id::text, user_id, key, path FROM project_storage_paths ORDER BY 1`)).rows
  const ledgerBefore = (await db.query(`SELECT user_id, project_id::text, idempotency_key, bytes::float8 FROM quota_ledger ORDER BY id`)).rows
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, logger: false })
  try {
    const { applied } = await client.migrate()
    assert.ok(!applied.includes(1) && applied.includes(6), `applied ${applied}`)
    assert.deepEqual((await db.query(`SELECT project_id, user_id, key, path FROM project_storage_paths ORDER BY 1`)).rows, before)
    assert.deepEqual((await db.query(`SELECT user_id, project_id, idempotency_key, bytes::float8 FROM quota_ledger ORDER BY id`)).rows, ledgerBefore)
    const types = await db.query(`SELECT table_name, data_type FROM information_schema.columns WHERE column_name = 'project_id' AND table_schema = 'public' AND table_name <> 'project_files' ORDER BY 1`)
    assert.ok(types.rows.every((r) => r.data_type === 'text'), JSON.stringify(types.rows))

    // Existing projects keep working, in upper case too (one spelling).
    const owner = 'user_2NNEqL2nrIRdJ194ndJqAHwEfxC'
    const existing = '0b6f1f0e-1c2d-4e5f-8a9b-0c1d2e3f4a51'
    assert.equal((await client.allocateProjectPath(owner, existing.toUpperCase())).key, `${owner}/${existing}/`)
    assert.equal((await client.recordUpload(owner, existing, 10)).usedBytes, 10485760 + 52428800 + 10)
    // A new project of the default source gets its projects.storage_path_id, as before.
    const fresh = (await db.query(`INSERT INTO projects (user_id, name) VALUES ($1, 'new') RETURNING id::text AS id`, [owner])).rows[0].id
    const record = await client.allocateProjectPath(owner, fresh)
    assert.equal((await db.query('SELECT storage_path_id::text AS s FROM projects WHERE id = $1', [fresh])).rows[0].s, record.id)

    // Rollback of 0006 (and what came after it) restores uuid columns and the cascade.
    const { MIGRATION_VERSIONS } = await import('./helpers/db.mjs')
    await client.rollback(MIGRATION_VERSIONS.filter((v) => v >= 6).length)
    const back = await db.query(`SELECT data_type FROM information_schema.columns WHERE table_name = 'project_storage_paths' AND column_name = 'project_id'`)
    assert.equal(back.rows[0].data_type, 'uuid')
    await db.query('DELETE FROM projects WHERE id = $1', [fresh])
    assert.equal((await db.query('SELECT count(*)::int AS n FROM project_storage_paths WHERE project_id = $1', [fresh])).rows[0].n, 0)
  } finally {
    await client.close()
  }
})

test('concurrent allocations of many projects from four clients: never a unique violation, one record each', async () => {
  // Without a lock on the app's row (the app's table may be any table), callers of one project
  // race on both unique keys of project_storage_paths; each loser reads the winner's record.
  const { insertProject } = await import('./helpers/db.mjs')
  const db = await createTestDatabase('src_race')
  const clients = Array.from({ length: 4 }, () => createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, poolSize: 4, logger: false }))
  try {
    await clients[0].migrate()
    for (let round = 0; round < 5; round++) {
      const owners = [0, 1, 2, 3].map((i) => `user_r${round}_${i}`)
      const projects = []
      for (let i = 0; i < 20; i++) projects.push([owners[i % 4], await insertProject(db, owners[i % 4])])
      const calls = []
      for (let k = 0; k < 8; k++) for (const [i, [owner, id]] of projects.entries()) calls.push(clients[(k + i) % 4].allocateProjectPath(owner, id))
      const results = await Promise.allSettled(calls)
      const failed = results.filter((r) => r.status === 'rejected').map((r) => r.reason.message)
      assert.deepEqual(failed, [])
      for (const [, id] of projects) {
        assert.equal(new Set(results.filter((r) => r.value.projectId === id).map((r) => r.value.id)).size, 1, 'one record per project')
      }
    }
    const { rows } = await db.query('SELECT count(*)::int AS n FROM project_storage_paths')
    assert.equal(rows[0].n, 100)
  } finally {
    await Promise.all(clients.map((c) => c.close()))
  }
})
