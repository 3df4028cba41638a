// Hostile batches of reserveUpload and recordUpload (src/quota/coalesce_reserve.rs, coalesce.rs):
// the same id twice in one batch, a conflicting id next to good calls, and the batch's connection
// cut while it waits for a row. Every caller gets its own answer, exactly once.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { createClient } from '../index.js'
import { createTestDatabase, holdRow, insertProject, untilLockWaiters } from './helpers/db.mjs'

const MB = 1024 * 1024
const db = await createTestDatabase('group_faults')
const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: 10 * MB, poolSize: 4, logger: false })
await client.migrate()
after(() => client.close())

async function checkInvariants() {
  const { rows } = await db.query(
    `SELECT q.user_id, q.used_bytes::float8 AS used, q.reserved_bytes::float8 AS reserved, q.limit_bytes::float8 AS limit,
            (SELECT coalesce(sum(bytes), 0)::float8 FROM quota_ledger l WHERE l.user_id = q.user_id) AS ledger,
            (SELECT coalesce(sum(bytes), 0)::float8 FROM quota_reservations r WHERE r.user_id = q.user_id AND r.status = 'pending') AS pending
       FROM user_quotas q`,
  )
  for (const row of rows) {
    assert.equal(row.used, row.ledger, `${row.user_id}: used_bytes is the ledger's sum`)
    assert.equal(row.reserved, row.pending, `${row.user_id}: reserved_bytes is what its pending reservations hold`)
    assert.ok(row.used + row.reserved <= row.limit, `${row.user_id}: within the limit`)
  }
}

/** Users with a quota row each and one project each. */
async function users(prefix, n) {
  const out = []
  for (let i = 0; i < n; i++) {
    const user = `${prefix}_${i}`
    const project = await insertProject(db, user)
    await client.recordUpload(user, project, 1, { uploadId: 'first' })
    out.push({ user, project })
  }
  return out
}

test('reserveUpload batches: the same id twice, a conflicting id, too big and foreign next to good calls', async () => {
  const [a, b, c] = await users('res_mix', 3)
  const taken = randomUUID()
  await client.reserveUpload(c.user, c.project, 1 * MB, { reservationId: taken })
  const calls = []
  const twice = []
  for (let round = 0; round < 10; round++) {
    const again = randomUUID()
    twice.push(again)
    calls.push(
      client.reserveUpload(a.user, a.project, 100),
      client.reserveUpload(b.user, b.project, 100, { reservationId: again }),
      client.reserveUpload(b.user, b.project, 100, { reservationId: again }), // the same request again
      client.reserveUpload(a.user, a.project, 20 * MB),
      client.reserveUpload(c.user, c.project, 2 * MB, { reservationId: taken }), // another size
      client.reserveUpload(b.user, a.project, 100), // a's project
    )
  }
  const answers = await Promise.allSettled(calls)
  const codes = answers.map((x) => (x.status === 'fulfilled' ? 'ok' : x.reason.code))
  assert.deepEqual(codes, Array.from({ length: 10 }, () => ['ok', 'ok', 'ok', 'QUOTA_EXCEEDED', 'CONFLICT', 'FORBIDDEN']).flat())
  for (let round = 0; round < 10; round++) {
    const [first, second] = [answers[round * 6 + 1].value, answers[round * 6 + 2].value]
    assert.deepEqual([first.duplicate, second.duplicate].sort(), [false, true], 'one of the two made it, the other is its retry')
    assert.equal(first.expiresAt.getTime(), second.expiresAt.getTime(), 'the retry answers the same expiry')
    assert.equal(answers[round * 6 + 4].reason.reason, 'KEY_REUSED')
  }
  const { rows } = await db.query(
    `SELECT count(*)::int AS made, count(DISTINCT xmin::text)::int AS commits FROM quota_reservations WHERE id = ANY($1::uuid[])`,
    [twice],
  )
  assert.equal(rows[0].made, 10, 'each id held once')
  const { rows: all } = await db.query(
    `SELECT count(*)::int AS made, count(DISTINCT xmin::text)::int AS commits FROM quota_reservations WHERE user_id = ANY($1) AND bytes = 100`,
    [[a.user, b.user]],
  )
  assert.equal(all[0].made, 20)
  assert.ok(all[0].commits < all[0].made, `reservations of two users shared commits (${all[0].commits} for ${all[0].made})`)
  await checkInvariants()
})

for (const kind of ['reserveUpload', 'recordUpload']) {
  test(`${kind}: a batch whose connection is cut while it waits for a row is answered call by call`, async () => {
    const [a, b, c, x] = await users(`cut_${kind}`, 4)
    const call = (u, key) =>
      kind === 'reserveUpload'
        ? client.reserveUpload(u.user, u.project, 1000, { reservationId: key })
        : client.recordUpload(u.user, u.project, 1000, { uploadId: key })
    const heldB = await holdRow(db, b.user)
    const heldX = await holdRow(db, x.user)
    const keys = [randomUUID(), randomUUID(), randomUUID(), randomUUID(), randomUUID()]
    let first
    let queued = []
    try {
      // Both slots busy on held rows, so the next calls queue into one batch; that batch then
      // waits for b's row, and its connection is cut there.
      first = call(b, keys[0])
      await untilLockWaiters(db, 1)
      const second = call(x, keys[1])
      await untilLockWaiters(db, 2)
      queued = [call(c, keys[2]), call(a, keys[3]), call(b, keys[4])]
      await db.query('SELECT 1') // one round trip: the queued calls have reached the queue
      await heldX.release()
      await second
      await untilLockWaiters(db, 2)
      const { rows } = await db.query(
        `SELECT pg_terminate_backend(pid) AS cut FROM pg_stat_activity
          WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%FOR NO KEY UPDATE OF q%'`,
      )
      assert.equal(rows.length, 1, 'the batch was found waiting')
    } finally {
      await heldX.release().catch(() => {})
      await heldB.release().catch(() => {})
    }
    const answers = await Promise.all([first, ...queued])
    assert.deepEqual(answers.map((r) => r.duplicate), [false, false, false, false])
    for (const [u, key] of [[b, keys[0]], [c, keys[2]], [a, keys[3]], [b, keys[4]]]) {
      const { rows } = await db.query(
        kind === 'reserveUpload'
          ? 'SELECT count(*)::int AS n FROM quota_reservations WHERE user_id = $1 AND id = $2::uuid'
          : 'SELECT count(*)::int AS n FROM quota_ledger WHERE user_id = $1 AND idempotency_key = $2',
        [u.user, key],
      )
      assert.equal(rows[0].n, 1, `${u.user} ${key}: recorded once`)
    }
    await checkInvariants()
  })
}
