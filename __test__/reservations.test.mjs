import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { createClient } from '../index.js'
import pg from 'pg'
import { createTestDatabase, insertProject, quotaCounters, rejection, untilLockWaiters } from './helpers/db.mjs'

const MB = 1024 * 1024
const db = await createTestDatabase('reserve')
const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: 100 * MB, logger: false })
await client.migrate()
after(() => client.close())

const counters = (userId) => quotaCounters(db, userId)

test('a reservation counts at once; commit turns it into usage, smaller if the file was smaller', async () => {
  const user = 'user_res1'
  const project = await insertProject(db, user)
  const held = await client.reserveUpload(user, project, 40 * MB)
  assert.equal(held.reservedBytes, 40 * MB)
  assert.equal(held.remainingBytes, 60 * MB)
  assert.ok(held.expiresAt > new Date())
  assert.equal((await client.checkQuota(user, 60 * MB + 1)).allowed, false, 'reserved bytes are not free')

  const committed = await client.commitUpload(user, held.reservationId, 30 * MB)
  assert.equal(committed.status, 'committed')
  assert.equal(committed.heldBytes, 40 * MB)
  assert.equal(committed.committedBytes, 30 * MB)
  assert.deepEqual(await counters(user), { used: 30 * MB, reserved: 0, ledger: 30 * MB })
})

test('committing twice answers the first outcome; after cancel it is a clear error and changes nothing', async () => {
  const user = 'user_res2'
  const project = await insertProject(db, user)
  const a = await client.reserveUpload(user, project, 10 * MB)
  await client.commitUpload(user, a.reservationId)
  const again = await client.commitUpload(user, a.reservationId)
  assert.deepEqual([again.duplicate, again.status, again.committedBytes], [true, 'committed', 10 * MB])

  const b = await client.reserveUpload(user, project, 5 * MB)
  const cancelled = await client.cancelUpload(user, b.reservationId)
  assert.equal(cancelled.status, 'cancelled')
  assert.equal(cancelled.reservedBytes, 0)
  const cancelledTwice = await client.cancelUpload(user, b.reservationId)
  assert.deepEqual([cancelledTwice.status, cancelledTwice.duplicate], ['cancelled', true], 'cancelling twice is harmless')
  assert.equal((await rejection(client.commitUpload(user, b.reservationId))).reason, 'ALREADY_SETTLED')
  assert.equal((await rejection(client.cancelUpload(user, a.reservationId))).reason, 'ALREADY_SETTLED', 'a committed upload cannot be cancelled')
  assert.deepEqual(await counters(user), { used: 10 * MB, reserved: 0, ledger: 10 * MB })
})

test('a larger commit needs room for the difference', async () => {
  const user = 'user_res3'
  const project = await insertProject(db, user)
  await client.recordUpload(user, project, 80 * MB)
  const held = await client.reserveUpload(user, project, 10 * MB)
  const tooBig = await rejection(client.commitUpload(user, held.reservationId, 30 * MB))
  assert.equal(tooBig.code, 'QUOTA_EXCEEDED')
  assert.equal(tooBig.requestedBytes, 20 * MB, 'the error names the extra bytes needed')
  assert.deepEqual(await counters(user), { used: 80 * MB, reserved: 10 * MB, ledger: 80 * MB }, 'nothing changed')
  const fine = await client.commitUpload(user, held.reservationId, 20 * MB)
  assert.equal(fine.usedBytes, 100 * MB)
})

test('an expired reservation stops counting at once, cannot be committed, and is swept', async () => {
  const user = 'user_res4'
  const project = await insertProject(db, user)
  const held = await client.reserveUpload(user, project, 90 * MB, { ttlMs: 1000 })
  assert.equal((await client.checkQuota(user, 20 * MB)).allowed, false)
  // Let the reservation expire: move its deadline into the past rather than sleeping.
  await db.query(`UPDATE quota_reservations SET expires_at = now() - interval '1 second' WHERE id = $1`, [held.reservationId])
  const check = await client.checkQuota(user, 20 * MB)
  assert.equal(check.allowed, true, 'expired bytes no longer count, even before a sweep')
  assert.equal(check.reservedBytes, 0)
  const late = await rejection(client.commitUpload(user, held.reservationId))
  assert.equal(late.code, 'RESERVATION_EXPIRED')
  assert.deepEqual(await counters(user), { used: 0, reserved: 0, ledger: 0 }, 'the late commit gave the bytes back')
  const { rows } = await db.query('SELECT status FROM quota_reservations WHERE id = $1', [held.reservationId])
  assert.equal(rows[0].status, 'expired')
})

test('sweepExpiredReservations gives back every user\'s expired holds', async () => {
  const users = ['user_sweep1', 'user_sweep2']
  for (const user of users) {
    const project = await insertProject(db, user)
    await client.reserveUpload(user, project, 7 * MB)
  }
  await db.query(`UPDATE quota_reservations SET expires_at = now() - interval '1 second' WHERE user_id = ANY($1)`, [users])
  const { users: swept } = await client.sweepExpiredReservations()
  assert.ok(swept >= 2)
  for (const user of users) assert.equal((await counters(user)).reserved, 0)
})

test('another user\'s reservation id is NOT_FOUND for them, like an unknown id', async () => {
  const user = 'user_res5'
  const project = await insertProject(db, user)
  const held = await client.reserveUpload(user, project, MB)
  assert.equal((await rejection(client.commitUpload('user_thief', held.reservationId))).code, 'NOT_FOUND')
  assert.equal((await rejection(client.cancelUpload('user_thief', held.reservationId))).code, 'NOT_FOUND')
  assert.equal((await rejection(client.commitUpload(user, '00000000-0000-4000-8000-000000000000'))).code, 'NOT_FOUND')
  assert.equal((await counters(user)).reserved, MB)
})

test('reserving more than is free is QUOTA_EXCEEDED and holds nothing', async () => {
  const user = 'user_res6'
  const project = await insertProject(db, user)
  const error = await rejection(client.reserveUpload(user, project, 100 * MB + 1))
  assert.equal(error.code, 'QUOTA_EXCEEDED')
  const { rows } = await db.query('SELECT count(*)::int AS n FROM quota_reservations WHERE user_id = $1', [user])
  assert.equal(rows[0].n, 0)
})

test('concurrent reserve/commit/cancel for one user never pass the limit and settle exactly', async () => {
  const user = 'user_res_race'
  const projects = await Promise.all([1, 2].map(() => insertProject(db, user)))
  const others = [1, 2].map(() => createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: 100 * MB, logger: false }))
  const clients = [client, ...others]
  let watcher
  try {
    let peak = 0
    watcher = setInterval(async () => {
      const c = await counters(user).catch(() => null)
      if (c) peak = Math.max(peak, c.used + c.reserved)
    }, 5)
    const outcomes = await Promise.all(
      Array.from({ length: 120 }, async (_, i) => {
        const c = clients[i % clients.length]
        const size = (i % 7) * MB + 123
        try {
          const held = await c.reserveUpload(user, projects[i % 2], size)
          if (i % 3 === 0) {
            await c.cancelUpload(user, held.reservationId)
            return 0
          }
          const actual = i % 2 === 0 ? size : Math.floor(size / 2)
          // Commit twice at once, from two clients: one commits, the other is its duplicate.
          const both = await Promise.all([
            c.commitUpload(user, held.reservationId, actual),
            clients[(i + 1) % clients.length].commitUpload(user, held.reservationId, actual),
          ])
          assert.deepEqual(both.map((r) => r.duplicate).sort(), [false, true], 'one commit counts')
          return actual
        } catch (error) {
          if (error.code === 'QUOTA_EXCEEDED') return 0
          throw error
        }
      }),
    )
    clearInterval(watcher)
    const committed = outcomes.reduce((a, b) => a + b, 0)
    const final = await counters(user)
    assert.deepEqual(final, { used: committed, reserved: 0, ledger: committed })
    assert.ok(final.used <= 100 * MB)
    assert.ok(peak <= 100 * MB, `used + reserved peaked at ${peak}`)
  } finally {
    clearInterval(watcher)
    await Promise.all(others.map((c) => c.close()))
  }
})

test('a caller-chosen reservationId makes a retried reserve hold the bytes once', async () => {
  const user = 'user_res_retry'
  const project = await insertProject(db, user)
  const reservationId = '5d0c1a6e-1f7b-4c3e-9a2d-8b7e6f5a4c3b'
  const attempts = await Promise.all(
    Array.from({ length: 5 }, () => client.reserveUpload(user, project, 3 * MB, { reservationId })),
  )
  assert.ok(attempts.every((r) => r.reservationId === reservationId))
  assert.equal((await counters(user)).reserved, 3 * MB, 'held once')
  const other = await rejection(client.reserveUpload(user, project, 4 * MB, { reservationId }))
  assert.equal(other.code, 'CONFLICT', 'the same id for a different size')
  await client.commitUpload(user, reservationId)
  assert.equal((await client.reserveUpload(user, project, 3 * MB, { reservationId })).duplicate, true, 'a late retry holds nothing')
  assert.deepEqual(await counters(user), { used: 3 * MB, reserved: 0, ledger: 3 * MB })
})

test('a reservation whose id another writer takes while it waits for the row is KEY_REUSED, not QUOTA_EXCEEDED', async () => {
  const user = 'user_res_id_race'
  const project = await insertProject(db, user)
  await client.setQuotaLimit(user, 9 * MB)
  const id = '00000000-0000-4000-8000-00000000a11d'
  // Another writer (another app instance) reserves 3 MB under the id: the row is locked when our
  // call's statement starts, so its snapshot has no reservation under the id; once the row is
  // free it holds 3 MB more, and 7 MB no longer fit. Run one after the other, the id decides first.
  const app = new pg.Client({ connectionString: db.url })
  await app.connect()
  try {
    await app.query('BEGIN')
    await app.query('UPDATE user_quotas SET reserved_bytes = reserved_bytes + $2 WHERE user_id = $1', [user, 3 * MB])
    await app.query(
      `INSERT INTO quota_reservations (id, user_id, project_id, bytes, expires_at) VALUES ($3, $1, $2, $4, now() + interval '1 hour')`,
      [user, project, id, 3 * MB],
    )
    const call = client.reserveUpload(user, project, 7 * MB, { reservationId: id }).catch((e) => e)
    await untilLockWaiters(db, 1)
    await app.query('COMMIT')
    const error = await call
    assert.equal(error.code, 'CONFLICT', `${error.code}: ${error.message}`)
    assert.equal(error.reason, 'KEY_REUSED')
    assert.deepEqual(await counters(user), { used: 0, reserved: 3 * MB, ledger: 0 })
  } finally {
    await app.end()
  }
})
