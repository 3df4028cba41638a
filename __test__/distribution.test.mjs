// docs/scaling.md says the schema distributes on Citus by user_id: every statement the request
// path sends pins one user (`user_id = $n`), so Citus can route it to one shard. Checked on what
// the addon really sends, read back from pg_stat_statements on a server of this test's own.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createClient } from '../index.js'
import { startOwnPostgres } from './helpers/own-postgres.mjs'

/** Tables distributed by user_id (co-located); the app's `projects` would be a reference table. */
const DISTRIBUTED = ['user_quotas', 'quota_ledger', 'quota_reservations', 'project_storage_paths', 'quota_project_copies', 'quota_copy_leases', 'quota_limit_changes']

/**
 * Statements that name a distributed table without pinning user_id, and why that is acceptable.
 * A new one fails this test until it pins the user or is listed here (and in docs/scaling.md).
 */
const NOT_PINNED = [
  // allocateProjectPath's lookup by project id (the project's owner is what it checks): a
  // multi-shard read on Citus until it also filters sp.user_id.
  /FROM storage_quota_project\(\$1\) p LEFT JOIN project_storage_paths sp ON sp.project_id = p.id$/,
  // Calls batched across users (group commit: checkQuota and getUsage reads, and the charges,
  // reservations, commits, cancels and deletions), one statement over an array of users by design: on
  // Citus a multi-shard read, or a batch's one transaction across shards.
  /FROM unnest\(\$1::text\[\]\) WITH ORDINALITY AS u\(user_id, n\)/,
  /\buser_id = ANY\(\$1\)/,
  /\bunnest\(\$\d+::text\[\], /,
]

/** One user, by a parameter: a filter `user_id = $n`, or an insert whose user_id is `$n`. */
const pinned = (sql) =>
  /\buser_id\s*=\s*\$\d+/.test(sql) || /^INSERT INTO \w+(?: AS \w+)? \(user_id,[^)]*\)\s*(?:VALUES \(|SELECT )\$\d+/.test(sql) ||
  /^INSERT INTO \w+(?: AS \w+)? \(\w+, user_id,[^)]*\)\s*SELECT \$\d+, \$\d+/.test(sql)
/** Foreign-key checks PostgreSQL runs itself (docs/scaling.md: on Citus they include user_id). */
const internal = (sql) => sql.includes('FROM ONLY "public".')

const own = await startOwnPostgres('dist', {
  postgresFlags: ['-c', 'shared_preload_libraries=pg_stat_statements', '-c', 'pg_stat_statements.track=all'],
})
const storageRoot = await mkdtemp(join(tmpdir(), 'sq-dist-'))
after(() => rm(storageRoot, { recursive: true, force: true }))

for (const [mode, url] of [
  ['direct', own.url],
  ['pooler mode', `${own.url}?pgbouncer=true`],
]) {
  test(`${mode}: every statement of the request path that touches a distributed table pins one user_id`, async () => {
    await own.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements')
    const quota = createClient({ databaseUrl: url, storageRoot, logger: false, defaultQuotaBytes: 10_000_000 })
    after(() => quota.close())
    await quota.migrate()
    const user = `dist_${mode.replace(' ', '_')}`
    const { rows } = await own.query(
      `INSERT INTO projects (user_id, name) SELECT $1, 'p' || g FROM generate_series(1, 4) g RETURNING id`,
      [user],
    )
    const [project, source, copy, fresh] = rows.map((r) => r.id)
    const { path } = await quota.allocateProjectPath(user, source)
    await writeFile(join(path, 'a.bin'), Buffer.alloc(500, 1))
    await own.query('SELECT pg_stat_statements_reset()')

    // The request path: what an app calls per upload, page view and project action.
    await quota.checkQuota(user, 100)
    await quota.allocateProjectPath(user, project)
    await quota.validatePath(user, project, 'a/b.txt')
    await quota.recordUpload(user, project, 100, { uploadId: 'u1' })
    await quota.recordUpload(user, project, 100, { uploadId: 'u1' })
    await Promise.all([1, 2, 3].map((i) => quota.recordUpload(user, project, 10, { uploadId: `batch-${i}` })))
    const held = await quota.reserveUpload(user, project, 300, { reservationId: randomUUID() })
    await quota.commitUpload(user, held.reservationId, 200)
    const dropped = await quota.reserveUpload(user, project, 300)
    await quota.cancelUpload(user, dropped.reservationId)
    await quota.recordDeletion(user, project, 50, { deletionId: 'd1' })
    await quota.registerProject(user, fresh, { sizeBytes: 10 })
    await quota.copyProject(user, source, copy)
    await quota.getUsage(user, { projects: true })
    await quota.setQuotaLimit(user, 20_000_000)
    await quota.removeProject(user, copy)

    const seen = await own.query(
      `SELECT s.query FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
        WHERE d.datname = 'app' AND s.query NOT LIKE '%pg_stat_statements%'`,
    )
    const statements = seen.rows.map((r) => r.query)
    const touching = statements.filter((sql) => DISTRIBUTED.some((table) => new RegExp(`\\b${table}\\b`).test(sql)))
    assert.ok(touching.length >= 10, `only ${touching.length} statements seen:\n${statements.join('\n---\n')}`)
    const unpinned = touching.filter((sql) => !pinned(sql) && !internal(sql) && !NOT_PINNED.some((re) => re.test(sql)))
    assert.deepEqual(unpinned, [], 'statements not pinned to one user')
    await quota.close()
  })
}
