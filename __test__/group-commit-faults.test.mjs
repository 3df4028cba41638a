// Hostile batches of reserveUpload, recordUpload, commitUpload, cancelUpload and recordDeletion
// (coalesce_reserve.rs, coalesce.rs, coalesce_commit.rs, coalesce_cancel.rs, coalesce_deletion.rs
// in src/quota/): the same id twice in one batch, a conflicting id next to good
// calls, the batch's connection cut while it waits for a row, a row that does not come out as the
// batch decided. Every caller gets its own answer, exactly once.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { existsSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createClient } from '../index.js'
import { createTestDatabase, holdRow, insertProject, untilLockWaiters, wrongProjectCounters } from './helpers/db.mjs'

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
    assert.ok(row.used >= 0, `${row.user_id}: used_bytes ${row.used} is not below zero`)
    assert.equal(row.reserved, row.pending, `${row.user_id}: reserved_bytes is what its pending reservations hold`)
    assert.ok(row.used + row.reserved <= row.limit, `${row.user_id}: within the limit`)
  }
  assert.deepEqual(await wrongProjectCounters(db), [], 'each project counter is its ledger entries\' sum, never below zero')
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

for (const kind of ['reserveUpload', 'recordUpload', 'commitUpload', 'cancelUpload', 'recordDeletion']) {
  test(`${kind}: a batch whose connection is cut while it waits for a row is answered call by call`, async () => {
    const [a, b, c, x] = await users(`cut_${kind}`, 4)
    const keys = [randomUUID(), randomUUID(), randomUUID(), randomUUID(), randomUUID()]
    if (kind === 'commitUpload' || kind === 'cancelUpload') {
      for (const [u, key] of [[b, keys[0]], [x, keys[1]], [c, keys[2]], [a, keys[3]], [b, keys[4]]]) {
        await client.reserveUpload(u.user, u.project, 1000, { reservationId: key })
      }
    }
    const call = (u, key) =>
      kind === 'reserveUpload'
        ? client.reserveUpload(u.user, u.project, 1000, { reservationId: key })
        : kind === 'recordUpload'
          ? client.recordUpload(u.user, u.project, 1000, { uploadId: key })
          : kind === 'commitUpload'
            ? client.commitUpload(u.user, key)
            : kind === 'cancelUpload'
              ? client.cancelUpload(u.user, key)
              : client.recordDeletion(u.user, u.project, 1, { deletionId: key })
    const heldB = await holdRow(db, b.user)
    const heldX = await holdRow(db, x.user)
    let first
    let queued = []
    try {
      // The slot busy on x's held row, so the next calls queue into one batch; that batch then
      // waits for b's row, and its connection is cut there.
      first = call(x, keys[1])
      await untilLockWaiters(db, 1)
      queued = [call(c, keys[2]), call(a, keys[3]), call(b, keys[4])]
      await db.query('SELECT 1') // one round trip: the queued calls have reached the queue
      await heldX.release()
      await first
      await untilLockWaiters(db, 1)
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
    for (const [u, key] of [[x, keys[1]], [c, keys[2]], [a, keys[3]], [b, keys[4]]]) {
      const { rows } = await db.query(
        {
          reserveUpload: 'SELECT count(*)::int AS n FROM quota_reservations WHERE user_id = $1 AND id = $2::uuid',
          recordUpload: 'SELECT count(*)::int AS n FROM quota_ledger WHERE user_id = $1 AND idempotency_key = $2',
          commitUpload: `SELECT count(*)::int AS n FROM quota_ledger WHERE user_id = $1 AND idempotency_key = 'reservation ' || $2`,
          cancelUpload: `SELECT count(*)::int AS n FROM quota_reservations WHERE user_id = $1 AND id = $2::uuid AND status = 'cancelled'`,
          recordDeletion: `SELECT count(*)::int AS n FROM quota_ledger WHERE user_id = $1 AND idempotency_key = 'deletion ' || $2 AND bytes = -1`,
        }[kind],
        [u.user, key],
      )
      assert.equal(rows[0].n, 1, `${u.user} ${key}: recorded once`)
    }
    await checkInvariants()
  })
}
test('commitUpload batches: the same commit twice, another size, commit and cancel of one reservation, too big and foreign next to good calls', async () => {
  const [a, b, c] = await users('commit_mix', 3)
  const calls = []
  const made = []
  for (let round = 0; round < 10; round++) {
    const r = {
      good: (await client.reserveUpload(a.user, a.project, 100)).reservationId,
      twice: (await client.reserveUpload(b.user, b.project, 100)).reservationId,
      sized: (await client.reserveUpload(c.user, c.project, 100)).reservationId,
      raced: (await client.reserveUpload(b.user, b.project, 100)).reservationId,
      big: (await client.reserveUpload(a.user, a.project, 100)).reservationId,
    }
    made.push(r)
  }
  for (const r of made) {
    calls.push(
      client.commitUpload(a.user, r.good),
      client.commitUpload(b.user, r.twice),
      client.commitUpload(b.user, r.twice), // the same request again
      client.commitUpload(c.user, r.sized, 100),
      client.commitUpload(c.user, r.sized, 200), // the same reservation, another size
      client.commitUpload(b.user, r.raced),
      client.cancelUpload(b.user, r.raced), // settles it the other way
      client.commitUpload(a.user, r.big, 20 * MB),
      client.commitUpload(c.user, r.good), // a's reservation id: not c's
    )
  }
  const answers = await Promise.allSettled(calls)
  const outcome = (x) => (x.status === 'fulfilled' ? x.value.status : x.reason.code)
  for (let round = 0; round < 10; round++) {
    const [good, first, second, sized, resized, commit, cancel, big, foreign] = answers.slice(round * 9, round * 9 + 9)
    assert.equal(outcome(good), 'committed')
    assert.deepEqual([first.value.duplicate, second.value.duplicate].sort(), [false, true], 'committed once, the other is its retry')
    assert.deepEqual([outcome(sized), outcome(resized)].sort(), ['CONFLICT', 'committed'])
    const settled = [outcome(commit), outcome(cancel)].sort()
    assert.ok(
      JSON.stringify(settled) === '["CONFLICT","committed"]' || JSON.stringify(settled) === '["CONFLICT","cancelled"]',
      `commit and cancel of one reservation: exactly one settles it (${settled})`,
    )
    for (const x of [commit, cancel, sized, resized]) {
      if (x.status === 'rejected') assert.ok(['ALREADY_SETTLED', 'KEY_REUSED'].includes(x.reason.reason), x.reason.message)
    }
    assert.equal(outcome(big), 'QUOTA_EXCEEDED')
    assert.equal(big.reason.requestedBytes, 20 * MB - 100)
    assert.equal(outcome(foreign), 'NOT_FOUND')
  }
  const { rows } = await db.query(
    `SELECT count(*)::int AS n, count(DISTINCT xmin::text)::int AS commits FROM quota_reservations WHERE id = ANY($1::uuid[]) AND status = 'committed'`,
    [made.flatMap((r) => [r.good, r.twice])],
  )
  assert.equal(rows[0].n, 20)
  assert.ok(rows[0].commits < rows[0].n, `commits of two users shared a transaction (${rows[0].commits} for ${rows[0].n})`)
  await checkInvariants()
})

test('commit batches and reserve/upload batches of two clients on the same users do not deadlock', async () => {
  const people = await users('cross', 6)
  const other = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: 10 * MB, poolSize: 4, logger: false })
  try {
    for (let round = 0; round < 5; round++) {
      const held = []
      for (const p of people) for (let i = 0; i < 3; i++) held.push([p, (await client.reserveUpload(p.user, p.project, 10)).reservationId])
      // Commits in reverse user order from one client, in order from the other, with charges and
      // reservations of the same users in flight.
      const work = []
      held.forEach(([p, id], i) => work.push((i % 2 ? client : other).commitUpload(p.user, id)))
      for (const p of [...people].reverse()) {
        work.push(other.recordUpload(p.user, p.project, 10), client.reserveUpload(p.user, p.project, 10), other.commitUpload(p.user, held[0][1]))
      }
      const answers = await Promise.allSettled(work)
      const failed = answers.filter((x) => x.status === 'rejected' && !(x.reason.code === 'NOT_FOUND'))
      assert.deepEqual(failed.map((x) => `${x.reason.code}: ${x.reason.message}`), [])
    }
  } finally {
    await other.close()
  }
  await checkInvariants()
})

for (const kind of ['recordUpload', 'reserveUpload', 'commitUpload', 'cancelUpload', 'recordDeletion']) {
  test(`${kind}: a batch whose quota row does not come out as decided is rolled back and answered call by call`, async () => {
    const [b, x, n, d] = await users(`drift_${kind}`, 4)
    // d's quota row gains one byte more than any write of it asks for, behind the batch's back.
    const column = kind === 'reserveUpload' || kind === 'cancelUpload' ? 'reserved_bytes' : 'used_bytes'
    // A cancel lowers reserved_bytes, a deletion used_bytes: the trigger then fires on a decrease
    // and keeps one byte.
    const changed = kind === 'cancelUpload' || kind === 'recordDeletion' ? '<' : '>'
    const fn = `drift_${kind.toLowerCase()}`
    await db.query(`CREATE FUNCTION ${fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.${column} := NEW.${column} + 1; RETURN NEW; END $$`)
    await db.query(
      `CREATE TRIGGER ${fn} BEFORE UPDATE ON user_quotas FOR EACH ROW
        WHEN (NEW.user_id = '${d.user}' AND NEW.${column} ${changed} OLD.${column}) EXECUTE FUNCTION ${fn}()`,
    )
    const keys = [randomUUID(), randomUUID(), randomUUID(), randomUUID()]
    const who = [b, x, n, d]
    if (kind === 'commitUpload' || kind === 'cancelUpload') {
      for (const [i, u] of who.entries()) await client.reserveUpload(u.user, u.project, 1000, { reservationId: keys[i] })
    }
    if (kind === 'recordDeletion') {
      for (const u of who) await client.recordUpload(u.user, u.project, 1000)
    }
    const call = (i) =>
      kind === 'reserveUpload'
        ? client.reserveUpload(who[i].user, who[i].project, 1000, { reservationId: keys[i] })
        : kind === 'recordUpload'
          ? client.recordUpload(who[i].user, who[i].project, 1000, { uploadId: keys[i] })
          : kind === 'commitUpload'
            ? client.commitUpload(who[i].user, keys[i])
            : kind === 'cancelUpload'
              ? client.cancelUpload(who[i].user, keys[i])
              : client.recordDeletion(who[i].user, who[i].project, 1000, { deletionId: keys[i] })
    const heldX = await holdRow(db, x.user)
    let first
    let queued = []
    try {
      // The slot busy on x's held row, so n's and d's calls queue into one batch.
      first = call(1)
      await untilLockWaiters(db, 1)
      queued = [call(2), call(3)]
      await db.query('SELECT 1') // one round trip: the queued calls have reached the queue
    } finally {
      await heldX.release()
    }
    await first
    const [, drifted] = await Promise.all(queued)
    const { rows } = await db.query(`SELECT used_bytes::float8 AS used, reserved_bytes::float8 AS reserved FROM user_quotas WHERE user_id = $1`, [d.user])
    // Sent alone, d's call answers its row as written (trigger included); the batch's answer
    // would be what it decided, one byte less.
    const answered = column === 'reserved_bytes' ? drifted.reservedBytes : drifted.usedBytes
    assert.equal(answered, column === 'reserved_bytes' ? rows[0].reserved : rows[0].used)
    const written = column === 'reserved_bytes'
      ? `SELECT count(DISTINCT xmin::text)::int AS commits FROM quota_reservations WHERE id = ANY($1::uuid[])`
      : `SELECT count(DISTINCT xmin::text)::int AS commits FROM quota_ledger
          WHERE idempotency_key = ANY(SELECT prefix || k FROM unnest($1::text[]) k, unnest(ARRAY['', 'reservation ', 'deletion ']) prefix)`
    const { rows: [commits] } = await db.query(written, [keys.slice(2)])
    assert.equal(commits.commits, 2, 'the batch was rolled back: n and d were written in a commit each')
    await db.query(`DROP TRIGGER ${fn} ON user_quotas; DROP FUNCTION ${fn}()`)
    await db.query(
      `UPDATE user_quotas q SET used_bytes = (SELECT coalesce(sum(bytes), 0) FROM quota_ledger l WHERE l.user_id = q.user_id),
              reserved_bytes = (SELECT coalesce(sum(bytes), 0) FROM quota_reservations r WHERE r.user_id = q.user_id AND r.status = 'pending')
        WHERE user_id = $1`,
      [d.user],
    )
    await checkInvariants()
  })
}

test('cancelUpload batches: the same cancel twice, a committed one, a foreign id and an expired one next to good calls', async () => {
  const [a, b, c] = await users('cancel_mix', 3)
  const made = []
  for (let round = 0; round < 10; round++) {
    const r = {
      good: (await client.reserveUpload(a.user, a.project, 100)).reservationId,
      twice: (await client.reserveUpload(b.user, b.project, 100)).reservationId,
      done: (await client.reserveUpload(c.user, c.project, 100)).reservationId,
      late: (await client.reserveUpload(c.user, c.project, 100)).reservationId,
    }
    await client.commitUpload(c.user, r.done)
    made.push(r)
  }
  // Expired, and already given back by a sweep: cancelling it changes nothing.
  await db.query(`UPDATE quota_reservations SET expires_at = now() - interval '1 minute' WHERE id = ANY($1::uuid[])`, [made.map((r) => r.late)])
  await client.sweepExpiredReservations()
  const calls = []
  for (const r of made) {
    calls.push(
      client.cancelUpload(a.user, r.good),
      client.cancelUpload(b.user, r.twice),
      client.cancelUpload(b.user, r.twice), // the same request again
      client.cancelUpload(c.user, r.done), // committed: cannot be cancelled
      client.cancelUpload(c.user, r.good), // a's reservation id: not c's
      client.cancelUpload(c.user, r.late),
    )
  }
  const answers = await Promise.allSettled(calls)
  const outcome = (x) => (x.status === 'fulfilled' ? x.value.status : x.reason.code)
  for (let round = 0; round < 10; round++) {
    const [good, first, second, done, foreign, late] = answers.slice(round * 6, round * 6 + 6)
    assert.equal(outcome(good), 'cancelled')
    assert.deepEqual([first.value.duplicate, second.value.duplicate].sort(), [false, true], 'cancelled once, the other is its retry')
    assert.equal(outcome(done), 'CONFLICT')
    assert.equal(done.reason.reason, 'ALREADY_SETTLED')
    assert.equal(outcome(foreign), 'NOT_FOUND')
    assert.equal(outcome(late), 'expired')
    assert.equal(late.value.duplicate, false)
  }
  const { rows } = await db.query(
    `SELECT count(*)::int AS n, count(DISTINCT xmin::text)::int AS commits FROM quota_reservations WHERE id = ANY($1::uuid[]) AND status = 'cancelled'`,
    [made.flatMap((r) => [r.good, r.twice])],
  )
  assert.equal(rows[0].n, 20)
  assert.ok(rows[0].commits < rows[0].n, `cancels of two users shared a transaction (${rows[0].commits} for ${rows[0].n})`)
  await checkInvariants()
})

/**
 * Calls that go out as one batch of deletions: x's row is held, so x's deletion holds the
 * deletion slot while `queue()` makes the calls, which then queue; once `reached()` resolves and
 * one round trip later they are in the queue, and x's row is released. Resolves to x's answer
 * and the queued calls' promises.
 */
async function deletionsBehind(x, queue, reached = async () => {}) {
  const heldX = await holdRow(db, x.user)
  try {
    const first = client.recordDeletion(x.user, x.project, 1, { deletionId: 'x' })
    await untilLockWaiters(db, 1)
    const queued = queue()
    await reached()
    await db.query('SELECT 1') // one round trip: the queued calls have reached the queue
    return { first, queued }
  } finally {
    await heldX.release()
  }
}

test('recordDeletion: one batch with the same upload deleted twice, a deletionId reused with another size, foreign and unknown targets and releases past the counter, in one commit', async () => {
  const [a, b, c, x] = await users('del_mix', 4)
  await client.recordUpload(a.user, a.project, 1000, { uploadId: 'photo' })
  await client.recordUpload(b.user, b.project, 3000, { uploadId: 'video' })
  await client.recordUpload(c.user, c.project, 500, { uploadId: 'doc' })
  const { first, queued } = await deletionsBehind(x, () =>
    [
      client.recordDeletion(a.user, a.project, undefined, { uploadId: 'photo' }),
      client.recordDeletion(a.user, a.project, undefined, { uploadId: 'photo' }), // the same deletion again
      client.recordDeletion(b.user, b.project, 1000, { deletionId: 'd' }),
      client.recordDeletion(b.user, b.project, 2000, { deletionId: 'd' }), // the same id, another size
      client.recordDeletion(b.user, a.project, 10, { deletionId: 'f' }), // a's project
      client.recordDeletion(b.user, b.project, undefined, { uploadId: 'never' }), // never recorded
      client.recordDeletion(c.user, c.project, 499, { uploadId: 'doc' }), // another size
      client.recordDeletion(c.user, c.project, 400, { deletionId: 'c1' }),
      client.recordDeletion(c.user, c.project, 400, { deletionId: 'c2' }), // 101 of it counted still
      client.recordDeletion(c.user, c.project, 400, { deletionId: 'c3' }), // nothing left
      client.recordDeletion(c.user, c.project, 400, { deletionId: 'c1' }), // c1 again
    ].map((p) => p.then((value) => ({ value }), (error) => ({ error }))),
  )
  assert.equal((await first).releasedBytes, 1)
  // Which of one user's calls the batch decided first is the order they reached it: each user's
  // answers are checked whatever that order was.
  const got = (await Promise.all(queued)).map(({ value, error }) =>
    error ? `${error.code} ${error.reason ?? ''}`.trim() : `released ${value.releasedBytes}${value.duplicate ? ' again' : ''}`,
  )
  const of = (...at) => at.map((i) => got[i]).sort()
  assert.deepEqual(of(0, 1), ['released 1000', 'released 1000 again'], 'the upload released once')
  assert.ok(
    of(2, 3)[0] === 'CONFLICT KEY_REUSED' && ['released 1000', 'released 2000'].includes(of(2, 3)[1]),
    `one of the two deletions under one id released its bytes, the other is KEY_REUSED: ${of(2, 3)}`,
  )
  assert.deepEqual(got.slice(4, 7), ['FORBIDDEN', 'NOT_FOUND', 'CONFLICT MISMATCH'])
  // c's project counted 501 bytes: three deletions of 400 release 400, 101 and 0 (capped at the
  // counter, never below zero), and c1 again answers what c1 released.
  assert.deepEqual(
    of(7, 8, 9, 10).filter((a) => !a.endsWith('again')),
    ['released 0', 'released 101', 'released 400'],
  )
  const [c1] = of(7, 10)
  assert.deepEqual(of(7, 10), [c1, `${c1} again`], 'c1 released once, and its retry answers that')
  const bUsed = 3001 - Number(of(2, 3)[1].split(' ')[1])
  const { rows } = await db.query(
    `SELECT count(*)::int AS entries, count(DISTINCT xmin::text)::int AS commits FROM quota_ledger
      WHERE user_id = ANY($1) AND kind = 'deletion'`,
    [[a.user, b.user, c.user]],
  )
  assert.deepEqual(rows[0], { entries: 5, commits: 1 }, 'the five releases of three users were written in one commit')
  const { rows: counters } = await db.query(
    `SELECT user_id, used_bytes::float8 AS used FROM quota_project_usage WHERE user_id = ANY($1) ORDER BY user_id`,
    [[a.user, b.user, c.user]],
  )
  assert.deepEqual(counters.map((r) => r.used), [1, bUsed, 0], 'each counter moved by what was released, down to zero and not below')
  await checkInvariants()
})

test('deleteProjectFile: the releases of two users\' files go out together with the other deletions in flight', async () => {
  const [a, b, x] = await users('del_files', 3)
  const files = []
  for (const u of [a, b]) {
    const { path } = await client.allocateProjectPath(u.user, u.project)
    await writeFile(join(path, 'f.bin'), Buffer.alloc(1000, 1))
    await client.recordUpload(u.user, u.project, 1000)
    files.push(join(path, 'f.bin'))
  }
  // Each call deletes its file first, then queues its release.
  const { first, queued } = await deletionsBehind(
    x,
    () => [a, b].map((u) => client.deleteProjectFile(u.user, u.project, 'f.bin', { deletionId: 'f' })),
    async () => {
      while (files.some((file) => existsSync(file))) await new Promise((resolve) => setImmediate(resolve))
    },
  )
  await first
  const released = await Promise.all(queued)
  assert.deepEqual(released.map((r) => [r.releasedBytes, r.duplicate, r.usedBytes]), [[1000, false, 1], [1000, false, 1]])
  const { rows } = await db.query(
    `SELECT count(*)::int AS entries, count(DISTINCT xmin::text)::int AS commits FROM quota_ledger WHERE idempotency_key = 'deletion f'`,
  )
  assert.deepEqual(rows[0], { entries: 2, commits: 1 }, 'both releases in one commit')
  await checkInvariants()
})
