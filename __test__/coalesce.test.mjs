// Concurrent uploads of one user inside one client are charged together (src/quota/coalesce.rs).
// What a caller relies on: each call still gets its own exact answer, the limit holds, and an
// upload id counts once, whether or not its call was batched.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomInt } from 'node:crypto'
import { createClient, QuotaExceededError, StorageQuotaError } from '../index.js'
import { createTestDatabase, insertProject } from './helpers/db.mjs'

const KB = 1024
const LIMIT = 10 * 1024 * KB
const db = await createTestDatabase('coalesce')
const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: LIMIT, poolSize: 8 })
await client.migrate()
after(() => client.close())

const settle = (promises) => Promise.allSettled(promises)

async function row(userId) {
  const { rows } = await db.query(
    `SELECT q.used_bytes::float8 AS used,
            (SELECT count(*)::int FROM quota_ledger l WHERE l.user_id = q.user_id) AS entries,
            (SELECT count(DISTINCT l.xmin::text)::int FROM quota_ledger l WHERE l.user_id = q.user_id) AS transactions,
            (SELECT coalesce(sum(bytes), 0)::float8 FROM quota_ledger l WHERE l.user_id = q.user_id) AS ledger
       FROM user_quotas q WHERE q.user_id = $1`,
    [userId],
  )
  return rows[0]
}

test('a burst of one user\'s uploads: each its own answer, as if run one after another, and the limit holds', async () => {
  const user = 'user_burst'
  const project = await insertProject(db, user)
  const first = await client.recordUpload(user, project, 1 * KB, { uploadId: 'first' })
  const sizes = Array.from({ length: 150 }, () => randomInt(1, 200 * KB))
  const results = await settle(sizes.map((bytes, i) => client.recordUpload(user, project, bytes, { uploadId: `u${i}` })))

  const accepted = []
  const states = new Set([first.usedBytes])
  results.forEach((r, i) => {
    if (r.status === 'fulfilled') {
      assert.equal(r.value.bytes, sizes[i])
      assert.equal(r.value.duplicate, false)
      accepted.push(r.value)
      states.add(r.value.usedBytes)
    }
  })
  assert.ok(accepted.length > 10 && accepted.length < sizes.length, `some fit and some not: ${accepted.length} accepted`)

  const after = await row(user)
  const acceptedSum = accepted.reduce((n, a) => n + a.bytes, 0)
  assert.equal(after.used, first.usedBytes + acceptedSum, 'used_bytes is exactly what was accepted')
  assert.ok(after.used <= LIMIT)
  assert.equal(after.ledger, after.used)
  assert.equal(after.entries, accepted.length + 1, 'one ledger entry per accepted upload')
  assert.ok(after.transactions < after.entries, `uploads were charged together (${after.transactions} commits for ${after.entries} entries)`)

  // Serial consistency: ordered by the usage they report, each accepted upload added exactly
  // its own bytes to the one before it.
  accepted.sort((a, b) => a.usedBytes - b.usedBytes)
  let previous = first.usedBytes
  for (const a of accepted) {
    assert.equal(a.usedBytes - previous, a.bytes)
    assert.equal(a.remainingBytes, LIMIT - a.usedBytes)
    previous = a.usedBytes
  }
  // Every refusal is truthful: at its turn the upload did not fit.
  for (const r of results.filter((r) => r.status === 'rejected')) {
    assert.ok(r.reason instanceof QuotaExceededError, String(r.reason))
    assert.ok(r.reason.requestedBytes > r.reason.remainingBytes)
    assert.ok(states.has(r.reason.usedBytes), 'refused against a usage some accepted upload left')
  }
})

test('the same uploadId sent many times at once counts once; another size under it is a CONFLICT', async () => {
  const user = 'user_dupburst'
  const project = await insertProject(db, user)
  await client.recordUpload(user, project, 1, { uploadId: 'warm' })
  const same = Array.from({ length: 20 }, () => client.recordUpload(user, project, 5 * KB, { uploadId: 'same' }))
  const other = Array.from({ length: 5 }, () => client.recordUpload(user, project, 7 * KB, { uploadId: 'same' }))
  const results = await settle([...same, ...other])
  const sameValues = results.slice(0, 20).map((r) => (assert.equal(r.status, 'fulfilled'), r.value))
  assert.equal(sameValues.filter((v) => !v.duplicate).length, 1, 'exactly one charged')
  assert.equal(sameValues.filter((v) => v.duplicate).length, 19)
  for (const r of results.slice(20)) {
    assert.equal(r.status, 'rejected')
    assert.equal(r.reason.code, 'CONFLICT')
  }
  const after = await row(user)
  assert.equal(after.used, 1 + 5 * KB)
  assert.equal(after.entries, 2)
  // Resending every id later changes nothing.
  const again = await Promise.all(Array.from({ length: 10 }, () => client.recordUpload(user, project, 5 * KB, { uploadId: 'same' })))
  assert.ok(again.every((v) => v.duplicate && v.usedBytes === 1 + 5 * KB))
})

test('unknown and foreign projects in a burst are refused alone; the rest are charged', async () => {
  const user = 'user_mixed'
  const mine = await insertProject(db, user)
  const theirs = await insertProject(db, 'user_other')
  const unknown = '6f1c2d3e-4a5b-4c6d-8e7f-901234567890'
  await client.recordUpload(user, mine, 1, { uploadId: 'warm' })
  const calls = []
  for (let i = 0; i < 30; i++) {
    const project = i % 3 === 0 ? mine : i % 3 === 1 ? theirs : unknown
    calls.push(client.recordUpload(user, project, 100, { uploadId: `m${i}` }))
  }
  const results = await settle(calls)
  results.forEach((r, i) => {
    if (i % 3 === 0) assert.equal(r.status, 'fulfilled')
    else {
      assert.ok(r.reason instanceof StorageQuotaError)
      assert.equal(r.reason.code, i % 3 === 1 ? 'FORBIDDEN' : 'NOT_FOUND')
    }
  })
  const after = await row(user)
  assert.equal(after.used, 1 + 10 * 100)
  assert.equal(after.entries, 11)
  assert.equal(await row('user_other'), undefined, 'nothing charged to the other user')
})

test('a burst for a user with no quota row yet, and bursts of several users at once', async () => {
  const users = ['user_new_a', 'user_new_b', 'user_new_c']
  const projects = await Promise.all(users.map((u) => insertProject(db, u)))
  const calls = []
  for (let i = 0; i < 40; i++) {
    for (let u = 0; u < users.length; u++) calls.push(client.recordUpload(users[u], projects[u], (u + 1) * 10, { uploadId: `n${i}` }))
  }
  const results = await Promise.all(calls)
  assert.equal(results.filter((r) => r.duplicate).length, 0)
  for (let u = 0; u < users.length; u++) {
    const after = await row(users[u])
    assert.equal(after.used, 40 * (u + 1) * 10)
    assert.equal(after.entries, 40)
  }
})
