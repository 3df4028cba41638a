import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { createClient, QuotaExceededError, StorageQuotaError } from '../index.js'
import { createTestDatabase, insertProject, rejection } from './helpers/db.mjs'

const MB = 1024 * 1024
const db = await createTestDatabase('quota')
const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: 100 * MB })
await client.migrate()
after(() => client.close())

async function ledgerSum(userId) {
  const { rows } = await db.query(
    `SELECT coalesce(sum(bytes), 0)::float8 AS total, count(*)::int AS n FROM quota_ledger WHERE user_id = $1`,
    [userId],
  )
  return rows[0]
}

async function usedBytes(userId) {
  const { rows } = await db.query('SELECT used_bytes::float8 AS used FROM user_quotas WHERE user_id = $1', [userId])
  return rows[0]?.used
}

test('a user without a row has the default quota and nothing used', async () => {
  const check = await client.checkQuota('user_fresh', 10 * MB)
  assert.deepEqual(check, {
    allowed: true,
    wouldRefuse: false,
    requestedBytes: 10 * MB,
    missingBytes: 0,
    fits: [true],
    mode: 'enforce',
    usedBytes: 0,
    reservedBytes: 0,
    limitBytes: 100 * MB,
    remainingBytes: 100 * MB,
    percentUsed: 0,
  })
  assert.equal((await client.checkQuota('user_fresh', 100 * MB + 1)).allowed, false)
  assert.equal(await usedBytes('user_fresh'), undefined, 'a check writes nothing')
})

test('recordUpload charges the bytes and reports usage after it', async () => {
  const user = 'user_upload1'
  const project = await insertProject(db, user)
  const first = await client.recordUpload(user, project, 30 * MB)
  assert.equal(first.duplicate, false)
  assert.equal(first.usedBytes, 30 * MB)
  assert.equal(first.remainingBytes, 70 * MB)
  assert.equal(first.percentUsed, 30)
  assert.match(first.uploadId, /^[0-9a-f-]{36}$/, 'a generated upload id')
  const second = await client.recordUpload(user, project, 12.5 * MB, { uploadId: 'up-2' })
  assert.equal(second.usedBytes, 42.5 * MB)
  assert.equal((await client.checkQuota(user, 57.5 * MB)).allowed, true)
  assert.equal((await client.checkQuota(user, 57.5 * MB + 1)).allowed, false)
  assert.deepEqual(await ledgerSum(user), { total: 42.5 * MB, n: 2 })
})

test('an upload that does not fit is refused with the numbers and a readable message', async () => {
  const user = 'user_full'
  const project = await insertProject(db, user)
  const free = Math.round(3.1 * MB)
  await client.recordUpload(user, project, 100 * MB - free)
  const error = await rejection(client.recordUpload(user, project, 12.5 * MB, { uploadId: 'too-big' }))
  assert.ok(error instanceof QuotaExceededError)
  assert.ok(error instanceof StorageQuotaError)
  assert.equal(error.code, 'QUOTA_EXCEEDED')
  assert.equal(error.requestedBytes, 12.5 * MB)
  assert.equal(error.limitBytes, 100 * MB)
  assert.equal(error.usedBytes, 100 * MB - free)
  assert.equal(error.remainingBytes, free)
  assert.equal(
    error.message,
    'Storage quota exceeded: 12.5 MB more would not fit; only 3.1 MB of your 100 MB is free',
  )
  const ledger = await ledgerSum(user)
  assert.equal(ledger.n, 1, 'a refused upload leaves no ledger entry')
  // The refused id is free to use once there is room: it was never recorded.
  const retry = await client.recordUpload(user, project, 1000, { uploadId: 'too-big' })
  assert.equal(retry.duplicate, false)
})

test('the same uploadId counts once, also when sent concurrently', async () => {
  const user = 'user_idem'
  const project = await insertProject(db, user)
  const results = await Promise.all(
    Array.from({ length: 20 }, () => client.recordUpload(user, project, 5 * MB, { uploadId: 'same-upload' })),
  )
  assert.equal(results.filter((r) => !r.duplicate).length, 1)
  assert.ok(results.every((r) => r.usedBytes === 5 * MB))
  assert.equal(await usedBytes(user), 5 * MB)
  assert.deepEqual(await ledgerSum(user), { total: 5 * MB, n: 1 })
})

test('reusing an uploadId for a different upload is a CONFLICT, not a silent success', async () => {
  const user = 'user_reuse'
  const project = await insertProject(db, user)
  await client.recordUpload(user, project, 1000, { uploadId: 'u-1' })
  const error = await rejection(client.recordUpload(user, project, 2000, { uploadId: 'u-1' }))
  assert.equal(error.code, 'CONFLICT')
  assert.equal(error.reason, 'KEY_REUSED')
  assert.equal(await usedBytes(user), 1000)
})

test('upload ids are per user: two users may use the same one', async () => {
  const [a, b] = ['user_ida', 'user_idb']
  const pa = await insertProject(db, a)
  const pb = await insertProject(db, b)
  await client.recordUpload(a, pa, 10, { uploadId: 'x' })
  const second = await client.recordUpload(b, pb, 10, { uploadId: 'x' })
  assert.equal(second.duplicate, false)
})

test('unknown project is NOT_FOUND; another user\'s project is FORBIDDEN; nothing is charged', async () => {
  const owner = 'user_owner'
  const project = await insertProject(db, owner)
  const missing = await rejection(client.recordUpload('user_other', randomUUID(), 10))
  assert.equal(missing.code, 'NOT_FOUND')
  const foreign = await rejection(client.recordUpload('user_other', project, 10))
  assert.equal(foreign.code, 'FORBIDDEN')
  assert.equal(await usedBytes('user_other'), undefined)
  assert.deepEqual(await ledgerSum('user_other'), { total: 0, n: 0 })
})

test('100 concurrent uploads for one user never pass the limit and each accepted one counts once', async () => {
  const user = 'user_race'
  const projects = await Promise.all([1, 2, 3].map(() => insertProject(db, user)))
  // Random sizes whose sum is well past the limit, from several clients (as several servers).
  const clients = [client, ...[1, 2].map(() => createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: 100 * MB }))]
  const sizes = Array.from({ length: 100 }, () => Math.floor(Math.random() * 4 * MB) + 1)
  try {
    const results = await Promise.allSettled(
      sizes.map((size, i) => clients[i % clients.length].recordUpload(user, projects[i % 3], size, { uploadId: `race-${i}` })),
    )
    const accepted = sizes.filter((_, i) => results[i].status === 'fulfilled')
    const refused = results.filter((r) => r.status === 'rejected')
    assert.ok(refused.length > 0, 'the sizes add up past the limit, so some must be refused')
    assert.ok(refused.every((r) => r.reason.code === 'QUOTA_EXCEEDED'), 'refusals are QUOTA_EXCEEDED only')
    const total = accepted.reduce((a, b) => a + b, 0)
    assert.equal(await usedBytes(user), total, 'used_bytes is exactly the sum of accepted uploads')
    assert.ok(total <= 100 * MB)
    assert.deepEqual(await ledgerSum(user), { total, n: accepted.length })
  } finally {
    await Promise.all(clients.slice(1).map((c) => c.close()))
  }
})

test('a zero-byte upload is fine for a user with room, refused for one over quota', async () => {
  const user = 'user_zero'
  const project = await insertProject(db, user)
  assert.equal((await client.recordUpload(user, project, 0)).usedBytes, 0)
  await client.recordUpload(user, project, 10)
  await db.query('UPDATE user_quotas SET limit_bytes = 5 WHERE user_id = $1', [user])
  assert.equal((await rejection(client.recordUpload(user, project, 0))).code, 'QUOTA_EXCEEDED')
})
