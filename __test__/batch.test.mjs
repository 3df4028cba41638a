// checkQuota and getUsage calls of many users at once go out as one statement per batch (src/quota/batch.rs);
// the calls of one event-loop turn reach the addon as one napi call (lib/together.js);
// every caller must still get exactly the answer it would get alone. Checked against a serial
// replay of the same calls on the same data, with users who have no row, users over their limit
// and expired reservations that must not count.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { createClient } from '../index.js'
import { NativeClient } from '../binding.js'
import { checkQuotaMany, recordUploadMany } from '../lib/packed.js'
import { createTestDatabase, insertProject } from './helpers/db.mjs'

const MB = 1024 * 1024
const db = await createTestDatabase('batch')
const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: 50 * MB, poolSize: 4 })
await client.migrate()
after(() => client.close())

const USERS = 24
const userId = (i) => `user_batch_${i}`

/** Quota rows for the users given one (the rest have none), with used, reserved and limit. */
async function seed(rows) {
  const sql = ['BEGIN', 'DELETE FROM quota_reservations', 'DELETE FROM user_quotas']
  for (const [i, row] of rows.entries()) {
    if (!row) continue
    // Rows over their limit are the point: inserted under a limit that fits, then lowered
    // (the database guard always lets a limit go down).
    sql.push(
      `INSERT INTO user_quotas (user_id, limit_bytes, used_bytes, reserved_bytes)
       VALUES ('${userId(i)}', ${Math.max(row.limit, row.used + row.expired)}, ${row.used}, ${row.expired})`,
      `UPDATE user_quotas SET limit_bytes = ${row.limit} WHERE user_id = '${userId(i)}'`,
    )
    if (row.expired > 0) {
      // A reservation past its TTL, not yet swept: it must not count against the user.
      sql.push(
        `INSERT INTO quota_reservations (id, user_id, project_id, bytes, expires_at, status)
         VALUES (gen_random_uuid(), '${userId(i)}', gen_random_uuid(), ${row.expired}, now() - interval '1 minute', 'pending')`,
      )
    }
  }
  sql.push('COMMIT')
  await db.query(sql.join(';\n'))
}

const quotaRow = fc.option(
  fc.record({
    limit: fc.integer({ min: 0, max: 100 }).map((n) => n * MB),
    used: fc.integer({ min: 0, max: 120 }).map((n) => n * MB),
    expired: fc.constantFrom(0, 0, 5 * MB),
  }),
  { nil: null },
)
const call = fc.record({
  user: fc.integer({ min: 0, max: USERS - 1 }),
  sizes: fc.array(fc.integer({ min: 0, max: 60 }).map((n) => n * MB), { minLength: 1, maxLength: 3 }),
  // getUsage reads go in the same batches as checkQuota's.
  usage: fc.boolean(),
})
const ask = (c) => (c.usage ? client.getUsage(userId(c.user)) : client.checkQuota(userId(c.user), c.sizes))

test('concurrent checkQuota and getUsage calls across users answer exactly as the same calls one by one', async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(quotaRow, { minLength: USERS, maxLength: USERS }), fc.array(call, { minLength: 1, maxLength: 120 }), async (rows, calls) => {
      await seed(rows)
      const together = await Promise.all(calls.map(ask))
      const oneByOne = []
      for (const c of calls) oneByOne.push(await ask(c))
      assert.deepEqual(together, oneByOne)
    }),
    { numRuns: 25 },
  )
})

test('a bad call among concurrent ones fails alone', async () => {
  await seed([{ limit: 10 * MB, used: 0, expired: 0 }])
  const answers = await Promise.allSettled([
    client.checkQuota(userId(0), 1 * MB),
    client.checkQuota('not a user id', 1 * MB),
    client.checkQuota(userId(1), 1 * MB),
    client.checkQuota(userId(0), 20 * MB),
  ])
  assert.deepEqual(answers.map((a) => a.status), ['fulfilled', 'rejected', 'fulfilled', 'fulfilled'])
  assert.equal(answers[1].reason.code, 'INVALID_ARGUMENT')
  assert.equal(answers[0].value.allowed, true)
  assert.equal(answers[2].value.limitBytes, 50 * MB, 'no row: the default quota')
  assert.equal(answers[3].value.allowed, false)
})

test('checkQuota calls of one event-loop turn reach the addon as one call, each answered or failed alone', async () => {
  await seed([{ limit: 10 * MB, used: 3 * MB, expired: 0 }, { limit: 4 * MB, used: 0, expired: 0 }])
  const native = new NativeClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: 50 * MB })
  try {
    const answers = await checkQuotaMany(native, [
      [userId(0), [1 * MB]],
      ['not a user id', [1]],
      [userId(1), [5 * MB]],
      [userId(2), [1]],
      [userId(0), []],
      [userId(0), [1 * MB, 20 * MB, 2 * MB]],
    ])
    assert.equal(answers.length, 6)
    assert.ok(answers[1] instanceof Error)
    assert.equal(answers[1].code, 'INVALID_ARGUMENT')
    assert.ok(answers[4] instanceof Error, 'an empty list of sizes fails that call alone')
    assert.equal(answers[4].code, 'INVALID_ARGUMENT')
    for (const [i, [user, sizes]] of [[0, [userId(0), [1 * MB]]], [2, [userId(1), [5 * MB]]], [3, [userId(2), [1]]], [5, [userId(0), [1 * MB, 20 * MB, 2 * MB]]]]) {
      assert.deepEqual(answers[i], await native.checkQuota(user, sizes), `call ${i} as alone`)
    }
    assert.deepEqual(answers[5].fits, [true, false, true], 'a list of sizes: each fit, in order')
    assert.equal(answers[2].allowed, false)
    assert.equal(answers[3].limitBytes, 50 * MB, 'no row: the default quota')
  } finally {
    await native.close()
  }
})

test('checkQuota answers handed over packed are the lone answers, in every mode', async () => {
  await seed([{ limit: 3 * MB, used: 1 * MB, expired: 0 }])
  for (const mode of ['enforce', 'shadow', 'off']) {
    const native = new NativeClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: 7 * MB, mode })
    try {
      const calls = [
        [userId(0), [1 * MB, 5 * MB]],
        [userId(1), [2 * MB + 1]],
        [userId(0), [3]],
      ]
      const answers = await checkQuotaMany(native, calls)
      for (const [i, [user, sizes]] of calls.entries()) {
        assert.deepEqual(answers[i], await native.checkQuota(user, sizes), `${mode}: call ${i} as alone`)
        assert.equal(answers[i].mode, mode)
      }
      assert.equal(answers[0].wouldRefuse, true)
      assert.equal(answers[0].allowed, mode !== 'enforce')
    } finally {
      native.close()
    }
  }
})

test('recordUpload calls of one event-loop turn reach the addon as one call, each answered or failed alone', async () => {
  await seed([{ limit: 10 * MB, used: 0, expired: 0 }])
  const project = await insertProject(db, userId(0))
  const native = new NativeClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: 50 * MB })
  try {
    // Counted before the hand-over, so the overwrite has content to replace whichever runs first:
    // it takes its own path at the same time as the batch, so the two may commit in either order.
    await native.recordUpload(userId(0), project, 1 * MB, { uploadId: 'before' })
    const answers = await recordUploadMany(native, [
      [userId(0), project, 1 * MB, { uploadId: 'a' }],
      [userId(0), project, 1 * MB, { uploadId: 'a' }],
      ['not a user id', project, 1],
      [userId(0), project, -1],
      [userId(0), project, 20 * MB],
      [userId(0), project, 2 * MB, { uploadId: 'b', replacesBytes: 1 * MB }],
    ])
    assert.equal(answers.length, 6)
    assert.deepEqual([answers[0].duplicate, answers[1].duplicate], [false, true], 'the same id twice: charged once, then its retry')
    assert.equal(answers[1].usedBytes, answers[0].usedBytes, 'the retry answers the usage its first call left')
    assert.ok([2 * MB, 3 * MB].includes(answers[0].usedBytes), 'after the overwrite or before it')
    assert.equal(answers[2].code, 'INVALID_ARGUMENT')
    assert.equal(answers[3].code, 'INVALID_ARGUMENT')
    assert.ok(answers[4] instanceof Error)
    assert.equal(answers[4].code, 'QUOTA_EXCEEDED', 'too big: refused alone, its neighbours charged')
    assert.equal(answers[5].replacedBytes, 1 * MB, 'an overwrite takes its own path in the same hand-over')
    assert.equal(answers[5].netBytes, 1 * MB)
    const usage = await native.getUsage(userId(0), false)
    assert.equal(usage.usedBytes, 3 * MB, '1 MB before, then 1 MB and the overwrite\'s net 1 MB, each once')
  } finally {
    native.close()
  }
})

test('recordUpload answers handed over packed are the lone answers, in every mode', async () => {
  for (const mode of ['enforce', 'shadow', 'off']) {
    // Twin users in the same state: the `a` users get the hand-overs, the `b` users the same
    // calls one by one. One call per user per hand-over: in shadow and off mode, and for an
    // overwrite, a call takes its own path at the same time as its neighbours.
    const twins = {}
    for (const side of ['a', 'b']) {
      twins[side] = []
      for (let i = 0; i < 4; i++) {
        const user = `user_packed_${mode}_${side}${i}`
        twins[side].push([user, await insertProject(db, user)])
      }
    }
    const rounds = (side) => {
      const [u0, u1, u2, u3] = twins[side]
      return [
        [
          [...u0, 1 * MB, { uploadId: 'one' }],
          [...u1, 5 * MB, { uploadId: 'big' }],
          [...u2, 7, {}],
          [...u3, -1, {}],
        ],
        [
          [...u0, 1 * MB, { uploadId: 'one' }],
          [...u1, 1 * MB, { uploadId: 'small' }],
        ],
        [
          [...u0, 2 * MB, { uploadId: 'two', replacesBytes: 1 * MB }],
          [...u2, 1, { uploadId: 'x' }],
        ],
      ]
    }
    const native = new NativeClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: 3 * MB, mode })
    try {
      const packed = []
      const alone = []
      for (const [r, round] of rounds('a').entries()) {
        packed.push(...(await recordUploadMany(native, round)))
        for (const [user, project, bytes, options] of rounds('b')[r]) {
          alone.push(await native.recordUpload(user, project, bytes, options).catch((error) => error))
        }
      }
      assert.equal(packed.length, 8)
      // Only a generated upload id differs.
      assert.match(packed[2].uploadId, /^[0-9a-f-]{36}$/, 'no uploadId: the generated one is told')
      assert.notEqual(packed[2].uploadId, alone[2].uploadId)
      packed[2].uploadId = alone[2].uploadId
      for (let i = 0; i < packed.length; i++) {
        if (alone[i] instanceof Error) {
          assert.ok(packed[i] instanceof Error, `${mode}: call ${i} fails as alone`)
          assert.equal(packed[i].code, alone[i].code)
        } else {
          assert.deepEqual(packed[i], alone[i], `${mode}: call ${i} as alone`)
          assert.deepEqual(Object.keys(packed[i]), Object.keys(alone[i]), `${mode}: call ${i}'s properties in the same order`)
        }
      }
      assert.equal(packed[3].code, 'INVALID_ARGUMENT')
      assert.equal(packed[4].duplicate, mode !== 'off', `${mode}: the retry is a duplicate where uploads are counted`)
      assert.equal(packed[0].mode, mode)
      assert.equal(packed[6].replacedBytes, mode === 'off' ? 0 : 1 * MB, 'the overwrite gave back what it replaced')
      if (mode === 'enforce') assert.equal(packed[1].code, 'QUOTA_EXCEEDED')
      if (mode === 'shadow') assert.equal(packed[1].wouldRefuse, true)
    } finally {
      native.close()
    }
  }
})

test('recordDeletion calls of one event-loop turn reach the addon as one call, each answered or failed alone', async () => {
  const user = 'user_batch_deleter'
  const other = 'user_batch_other_owner'
  const project = await insertProject(db, user)
  const foreign = await insertProject(db, other)
  const native = new NativeClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: 50 * MB })
  try {
    await native.recordUpload(user, project, 1 * MB, { uploadId: 'a' })
    await native.recordUpload(user, project, 2 * MB, { uploadId: 'b' })
    const calls = [
      [user, project, null, 'a', null],
      [user, project, null, 'a', null],
      ['not a user id', project, 1, null, null],
      [user, project, null, 'never-recorded', null],
      [user, project, 1 * MB, null, 'd1'],
      [user, project, 2 * MB, null, 'd1'],
      [user, foreign, 1, null, 'd2'],
      [user, project, null, null, null],
    ]
    const answers = await native.recordDeletionMany(...[0, 1, 2, 3, 4].map((k) => calls.map((c) => c[k])))
    assert.equal(answers.length, calls.length)
    assert.deepEqual([answers[0].releasedBytes, answers[0].duplicate], [1 * MB, false], 'upload a released')
    assert.deepEqual([answers[1].releasedBytes, answers[1].duplicate], [1 * MB, true], 'its retry: what it released, once')
    assert.equal(answers[2].code, 'INVALID_ARGUMENT')
    assert.equal(answers[3].code, 'NOT_FOUND')
    assert.deepEqual([answers[4].releasedBytes, answers[4].usedBytes], [1 * MB, 1 * MB], 'released by bytes, after upload a')
    assert.equal(answers[5].code, 'CONFLICT')
    assert.equal(answers[5].reason, 'KEY_REUSED', 'another size under the same deletionId')
    assert.equal(answers[6].code, 'FORBIDDEN')
    assert.equal(answers[7].code, 'INVALID_ARGUMENT', 'neither bytes nor an uploadId')
    for (const i of [2, 3, 5, 6, 7]) assert.ok(answers[i] instanceof Error, `call ${i} fails alone, as an Error`)
    const usage = await native.getUsage(user, false)
    assert.equal(usage.usedBytes, 1 * MB, '3 MB recorded, 2 MB released, once each')
    // Through the package: calls of one turn, answered as each would be alone.
    const [again, more] = await Promise.all([
      client.recordDeletion(user, project, undefined, { uploadId: 'a' }),
      client.recordDeletion(user, project, 1 * MB, { deletionId: 'd3' }),
    ])
    assert.deepEqual([again.releasedBytes, again.duplicate], [1 * MB, true])
    assert.deepEqual([more.releasedBytes, more.usedBytes], [1 * MB, 0])
  } finally {
    native.close()
  }
})

test('the hand-over methods of NativeClient refuse hostile arguments without a panic or a write', async () => {
  const user = 'user_batch_hostile'
  const project = await insertProject(db, user)
  const native = new NativeClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: 50 * MB })
  const ledger = async () => (await db.query('SELECT count(*)::int AS n FROM quota_ledger')).rows[0].n
  const reservations = async () => (await db.query('SELECT count(*)::int AS n FROM quota_reservations')).rows[0].n
  // Valid arguments for two calls of each method; one position at a time is replaced.
  const methods = {
    checkQuotaMany: [[user, user], [1, 2], [1, 1]],
    recordUploadMany: [[user, user], [project, project], [1, 2], ['h1', 'h2'], [null, null]],
    reserveUploadMany: [[user, user], [project, project], [1, 2], [null, null], [null, null]],
    commitUploadMany: [[user, user], ['00000000-0000-4000-8000-000000000000', '00000000-0000-4000-8000-000000000001'], [null, null]],
    recordDeletionMany: [[user, user], [project, project], [1, null], [null, 'h-none'], ['d1', null]],
  }
  // Settles (a sync throw counts), never crashes the process; with every array valid in shape,
  // each entry is its answer or an Error with a code.
  async function settle(name, args) {
    try {
      const out = await native[name](...args)
      const entries = name === 'checkQuotaMany' || name === 'recordUploadMany' ? null : out
      if (entries) for (const e of entries) if (e instanceof Error) assert.equal(typeof e.code, 'string', `${name}: ${e.message}`)
      return 'resolved'
    } catch (error) {
      assert.ok(error instanceof Error, `${name} threw a non-Error`)
      return 'refused'
    }
  }
  try {
    const [ledgerBefore, reservationsBefore] = [await ledger(), await reservations()]
    // Not an array where an array is expected: the whole call is refused, nothing is written.
    const notArray = fc.anything().filter((v) => !Array.isArray(v))
    for (const [name, valid] of Object.entries(methods)) {
      for (let position = 0; position < valid.length; position++) {
        await fc.assert(
          fc.asyncProperty(notArray, async (value) => {
            const args = valid.map((a, i) => (i === position ? value : a))
            assert.equal(await settle(name, args), 'refused', `${name} argument ${position}: ${fc.stringify(value).slice(0, 60)}`)
          }),
          { numRuns: 40 },
        )
      }
    }
    assert.equal(await ledger(), ledgerBefore, 'nothing was charged or released')
    assert.equal(await reservations(), reservationsBefore, 'nothing was reserved')
    // Arrays of anything, of any length (a list of sizes shorter or longer than the calls, counts
    // past the end, holes): each call answered or failed alone, or the call refused as a whole.
    for (const [name, valid] of Object.entries(methods)) {
      for (let position = 0; position < valid.length; position++) {
        await fc.assert(
          fc.asyncProperty(fc.array(fc.oneof(fc.anything(), fc.integer(), fc.double(), fc.constant(2 ** 32 + 1)), { maxLength: 5 }), async (value) => {
            await settle(name, valid.map((a, i) => (i === position ? value : a)))
          }),
          { numRuns: 40 },
        )
      }
    }
    // Still answering after all of it.
    assert.equal((await native.checkQuota(user, [1])).allowed, true)
  } finally {
    native.close()
  }
})
