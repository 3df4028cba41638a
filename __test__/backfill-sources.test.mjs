// The batched backfill over a configured project source (not `projects(id uuid, user_id)`):
// an integer-id table with text owners, and a uuid-owner table, each with a `size_bytes`
// column and an owner index of their own; one without a size column (zero baselines). Numbers
// right before, during (reads of owners not reached) and after the backfill.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createClient } from '../index.js'
import { createTestDatabase } from './helpers/db.mjs'

process.env.STORAGE_QUOTA_LOG = 'off'
const TB = 1024 ** 4
const ROWS = 10_500 // above the 10,000 that migrate() backfills by itself

const shapes = [
  {
    name: 'integer ids, text owners',
    ddl: `CREATE TABLE boards (id serial PRIMARY KEY, org_id text NOT NULL, size_bytes bigint);
          CREATE INDEX boards_org_idx ON boards (org_id);
          INSERT INTO boards (org_id, size_bytes)
          SELECT 'org_' || (i % 700), CASE WHEN i % 9 = 0 THEN NULL ELSE i * 101 END FROM generate_series(1, ${ROWS}) i;`,
    projects: { table: 'boards', owner: 'org_id' },
    table: 'boards',
    owner: 'org_id',
  },
  {
    name: 'uuid ids, uuid owners',
    ddl: `CREATE TABLE assets (id uuid PRIMARY KEY, owner uuid NOT NULL, size_bytes integer NOT NULL DEFAULT 0);
          INSERT INTO assets (id, owner, size_bytes)
          SELECT md5('a' || i)::uuid, md5('o' || (i % 650))::uuid, (i * 37) % 5000 FROM generate_series(1, ${ROWS}) i;`,
    projects: { table: 'assets', owner: 'owner' },
    table: 'assets',
    owner: 'owner',
  },
]

for (const shape of shapes) {
  test(`backfill over a configured source (${shape.name}): every owner seeded once with their sizes, right before and after`, async () => {
    const db = await createTestDatabase(`bfs_${shape.table}`)
    await db.query(shape.ddl)
    const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, projects: shape.projects, defaultQuotaBytes: TB, logger: false })
    try {
      const { rows: sizes } = await db.query(
        `SELECT ${shape.owner}::text AS owner, coalesce(sum(greatest(size_bytes, 0)), 0)::float8 AS bytes
           FROM ${shape.table} GROUP BY 1 ORDER BY 1`,
      )
      const expected = new Map(sizes.map((r) => [r.owner, r.bytes]))
      const migrated = await client.migrate()
      assert.equal(migrated.backfill.done, false, 'a large table is left to the backfill step')
      // Before the backfill: reads count the owner's sizes from the configured table.
      const [first, second] = sizes
      assert.equal((await client.getUsage(first.owner)).usedBytes, first.bytes)
      // A charge before the backfill seeds the owner once.
      const { rows: [project] } = await db.query(`SELECT id::text FROM ${shape.table} WHERE ${shape.owner}::text = $1 AND size_bytes > 0 LIMIT 1`, [second.owner])
      await client.recordUpload(second.owner, project.id, 5, { uploadId: 'early' })
      expected.set(second.owner, second.bytes + 5)

      const done = await client.backfill({ batchSize: 1000 })
      assert.equal(done.done, true)
      assert.equal(done.scanned, ROWS)
      assert.equal(done.skippedProjects, 0)
      const { rows: quotas } = await db.query(
        `SELECT q.user_id, q.used_bytes::float8 AS used, q.seeded,
                (SELECT coalesce(sum(bytes), 0)::float8 FROM quota_ledger l WHERE l.user_id = q.user_id) AS ledger
           FROM user_quotas q`,
      )
      assert.equal(quotas.length, expected.size, 'a quota row per owner')
      for (const q of quotas) {
        assert.equal(q.seeded, true)
        assert.equal(q.used, expected.get(q.user_id), `${q.user_id}`)
        assert.equal(q.ledger, q.used, `${q.user_id}: ledger`)
      }
      const drift = await db.query(
        `SELECT count(*)::int AS n FROM quota_project_usage u
          WHERE u.used_bytes <> storage_quota_project_ledger_bytes(u.user_id, u.project_id)`,
      )
      assert.equal(drift.rows[0].n, 0, 'every project counter equals its ledger')
      // A project's baseline share comes back once with removeProject.
      const removed = await client.removeProject(second.owner, project.id)
      const { rows: [size] } = await db.query(`SELECT size_bytes::float8 AS s FROM ${shape.table} WHERE id::text = $1`, [project.id])
      assert.equal(removed.usedBytes, second.bytes + 5 - size.s - 5)
      assert.equal((await client.reconcile(second.owner)).driftedUsers, 0)
      assert.equal((await client.reconcile(first.owner)).driftedUsers, 0)
    } finally {
      await client.close()
    }
  })
}

test('a configured source without a size column: owners seeded with zero baselines', async () => {
  const db = await createTestDatabase('bfs_nosize')
  await db.query(`CREATE TABLE notes (id bigint PRIMARY KEY, author text NOT NULL);
                  INSERT INTO notes SELECT i, 'user_' || (i % 40) FROM generate_series(1, 300) i;`)
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, projects: { table: 'notes', owner: 'author' }, logger: false })
  try {
    const migrated = await client.migrate()
    assert.equal(migrated.backfill.done, true, 'a small table is backfilled by migrate()')
    const { rows } = await db.query('SELECT count(*)::int AS n, sum(used_bytes)::int AS used, bool_and(seeded) AS seeded FROM user_quotas')
    assert.deepEqual(rows[0], { n: 40, used: 0, seeded: true })
    const index = await db.query(`SELECT 1 FROM pg_indexes WHERE tablename = 'notes' AND indexname = 'storage_quota_projects_owner_idx'`)
    assert.equal(index.rows.length, 1, 'the owner index the scan needs was created')
  } finally {
    await client.close()
  }
})
