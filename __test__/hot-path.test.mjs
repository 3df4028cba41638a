// What the request path sends per call, read back from pg_stat_statements on a server of this
// test's own: a charge is one statement (one transaction, also behind a pooler), the sweep of
// expired reservations goes out only when the user has one and then in the charge's transaction,
// and a call alone takes the single-user statement, not the batch's (BENCHMARKS.md: the array
// statements cost more when sent for one user, and a lone call must not wait for a batch), while
// reads made at the same moment share one.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createClient } from '../index.js'
import { startOwnPostgres } from './helpers/own-postgres.mjs'

const own = await startOwnPostgres('hot', {
  postgresFlags: ['-c', 'shared_preload_libraries=pg_stat_statements', '-c', 'pg_stat_statements.track=all'],
})
const storageRoot = await mkdtemp(join(tmpdir(), 'sq-hot-'))
after(() => rm(storageRoot, { recursive: true, force: true }))
await own.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements')

/** Calls per statement the client sent to database `app` since the last reset (not the triggers'). */
async function sent() {
  const { rows } = await own.query(
    `SELECT s.query, s.calls::int AS calls FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
      WHERE d.datname = 'app' AND s.toplevel AND s.query NOT LIKE '%pg_stat_statements%'`,
  )
  return rows
}
const callsOf = (rows, pattern) => rows.filter((r) => pattern.test(r.query)).reduce((n, r) => n + r.calls, 0)
// pg_stat_statements shows a constant as $n, or as written when the entry was made by the
// execution of a statement prepared before the reset.
const SWEEP = /WITH expired AS \(\s*UPDATE quota_reservations SET status = (\$\d+|'expired'), settled_at = now\(\)/
const RECORD = /INSERT INTO quota_ledger \(user_id, project_id, idempotency_key, kind, bytes\)\s+SELECT \$1/
const RESERVE = /INSERT INTO quota_reservations \(id, user_id, project_id/
const BATCH_LOCK = /FOR NO KEY UPDATE OF q/
const SINGLE_READ = /FROM user_quotas q WHERE q\.user_id = \$1/
const BATCH_READ = /FROM unnest\(\$1::text\[\]\) WITH ORDINALITY/
const COMMIT = /^COMMIT$/i

for (const [mode, suffix] of [
  ['direct', ''],
  ['pooler mode', '?pgbouncer=true'],
]) {
  const tag = mode.replace(' ', '_')

  async function setup(name) {
    const quota = createClient({ databaseUrl: own.url + suffix, storageRoot, logger: false, defaultQuotaBytes: 10_000_000 })
    after(() => quota.close())
    await quota.migrate()
    const user = `hot_${tag}_${name}`
    const { rows } = await own.query(`INSERT INTO projects (user_id, name) VALUES ($1, 'p') RETURNING id`, [user])
    const project = rows[0].id
    // Warm up: the quota row exists and every statement is prepared (or its types learned).
    await quota.recordUpload(user, project, 1, { uploadId: `warm-${randomUUID()}` })
    await quota.reserveUpload(user, project, 1)
    await quota.checkQuota(user, 1)
    return { quota, user, project }
  }

  test(`${mode}: a lone commitUpload is one statement (no read of the reservation first)`, async () => {
    const { quota, user, project } = await setup('commit')
    const held = []
    for (let i = 0; i < 3; i++) held.push((await quota.reserveUpload(user, project, 10)).reservationId)
    await own.query('SELECT pg_stat_statements_reset()')
    for (const id of held) assert.equal((await quota.commitUpload(user, id)).status, 'committed')
    const rows = await sent()
    const log = rows.map((r) => `${r.calls}× ${r.query}`).join('\n---\n')
    const settle = /UPDATE quota_reservations s SET status = (\$\d+|'committed')/
    assert.equal(callsOf(rows, settle), 3, log)
    const other = rows.filter((r) => !settle.test(r.query) && /\b(FROM|INTO|UPDATE)\b/.test(r.query))
    assert.deepEqual(other.map((r) => r.query), [], 'statements besides the commits')
  })

  test(`${mode}: a charge with nothing expired is one statement, and no sweep goes out`, async () => {
    const { quota, user, project } = await setup('plain')
    // A live reservation of the user's own: pending, but nothing to sweep.
    await quota.reserveUpload(user, project, 100, { ttlMs: 3_600_000 })
    await own.query('SELECT pg_stat_statements_reset()')
    for (let i = 0; i < 5; i++) await quota.recordUpload(user, project, 10, { uploadId: `u${i}` })
    for (let i = 0; i < 3; i++) await quota.reserveUpload(user, project, 10)
    const rows = await sent()
    const log = rows.map((r) => `${r.calls}× ${r.query}`).join('\n---\n')
    assert.equal(callsOf(rows, SWEEP), 0, `a sweep went out with nothing to sweep:\n${log}`)
    assert.equal(callsOf(rows, RECORD), 5, log)
    assert.equal(callsOf(rows, RESERVE), 3, log)
    // Nothing else touched a table: one statement per call.
    const other = rows.filter((r) => !RECORD.test(r.query) && !RESERVE.test(r.query) && /\b(FROM|INTO|UPDATE)\b/.test(r.query))
    assert.deepEqual(other.map((r) => r.query), [], 'statements besides the charges')
    // One transaction per call: implicit in direct mode, BEGIN … COMMIT per statement behind a pooler.
    assert.equal(callsOf(rows, COMMIT), mode === 'direct' ? 0 : 8, log)
  })

  test(`${mode}: an expired reservation is swept in the charge's transaction`, async () => {
    const { quota, user, project } = await setup('expired')
    for (const [call, hold, charge, written] of [
      ['recordUpload', 9_000_000, () => quota.recordUpload(user, project, 2_000_000, { uploadId: 'after-expiry' }),
        `SELECT xmin::text AS x FROM quota_ledger WHERE user_id = $1 AND idempotency_key = 'after-expiry'`],
      ['reserveUpload', 7_000_000, () => quota.reserveUpload(user, project, 4_000_000),
        `SELECT xmin::text AS x FROM quota_reservations WHERE user_id = $1 AND status = 'pending' ORDER BY created_at DESC LIMIT 1`],
    ]) {
      // Held, then expired: the charge fits in the 10 MB only once they are given back.
      const held = await quota.reserveUpload(user, project, hold)
      await own.query(`UPDATE quota_reservations SET expires_at = now() - interval '1 second' WHERE id = $1`, [held.reservationId])
      await own.query('SELECT pg_stat_statements_reset()')
      await charge()
      const rows = await sent()
      const log = rows.map((r) => `${r.calls}× ${r.query}`).join('\n---\n')
      assert.equal(callsOf(rows, SWEEP), 1, `${call}: one sweep\n${log}`)
      // The sweep and the charge that follows it are one transaction: the same xid wrote both.
      const { rows: swept } = await own.query(`SELECT status, xmin::text AS x FROM quota_reservations WHERE id = $1`, [held.reservationId])
      assert.equal(swept[0].status, 'expired', call)
      const { rows: charged } = await own.query(written, [user])
      assert.equal(charged[0].x, swept[0].x, `${call}: the sweep committed apart from the charge`)
      const { rows: counters } = await own.query(
        `SELECT reserved_bytes::float8 AS reserved, (SELECT coalesce(sum(bytes), 0)::float8 FROM quota_reservations
           WHERE user_id = $1 AND status = 'pending') AS pending FROM user_quotas WHERE user_id = $1`,
        [user],
      )
      assert.equal(counters[0].reserved, counters[0].pending, `${call}: reserved_bytes matches the pending reservations`)
    }
  })

  test(`${mode}: a lone call takes the single-user statement, not the batch's`, async () => {
    const { quota, user, project } = await setup('lone')
    await own.query('SELECT pg_stat_statements_reset()')
    for (let i = 0; i < 3; i++) {
      await quota.checkQuota(user, 10)
      await quota.getUsage(user)
      await quota.recordUpload(user, project, 10, { uploadId: `lone${i}` })
    }
    const rows = await sent()
    const log = rows.map((r) => `${r.calls}× ${r.query}`).join('\n---\n')
    assert.equal(callsOf(rows, BATCH_READ), 0, `a lone read went through the batch:\n${log}`)
    assert.equal(callsOf(rows, BATCH_LOCK), 0, `a lone recordUpload went through the batch:\n${log}`)
    assert.equal(callsOf(rows, SINGLE_READ), 6, log)
    assert.equal(callsOf(rows, RECORD), 3, log)
  })

  test(`${mode}: concurrent getUsage calls of many users share statements`, async () => {
    const { quota } = await setup('many')
    const users = Array.from({ length: 40 }, (_, i) => `hot_${tag}_many_${i}`)
    await own.query(
      `INSERT INTO user_quotas (user_id, limit_bytes) SELECT u, 1000 FROM unnest($1::text[]) u ON CONFLICT DO NOTHING`,
      [users],
    )
    await own.query('SELECT pg_stat_statements_reset()')
    const reports = await Promise.all(users.map((u) => quota.getUsage(u)))
    assert.deepEqual(new Set(reports.map((r) => r.limitBytes)), new Set([1000]))
    const rows = await sent()
    const log = rows.map((r) => `${r.calls}× ${r.query}`).join('\n---\n')
    assert.ok(callsOf(rows, BATCH_READ) >= 1, `40 reads at once and not one batch:\n${log}`)
    assert.ok(callsOf(rows, BATCH_READ) + callsOf(rows, SINGLE_READ) < 40, log)
  })
}
