// One idempotency rule for every key (upload, deletion, reservation, commit/cancel): scoped to the
// user; the same key with the same request answers `duplicate: true` with the original outcome,
// however many arrive at once or later; the same key with another request is CONFLICT with reason
// KEY_REUSED; nothing about another user's keys is revealed.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { createClient } from '../index.js'
import { createTestDatabase, insertProject, quotaCounters, rejection } from './helpers/db.mjs'

const KB = 1024
const N = 12
const db = await createTestDatabase('idem')
const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, defaultQuotaBytes: 1024 * KB, poolSize: 8, logger: false })
await client.migrate()
after(() => client.close())

const counters = (user) => quotaCounters(db, user)
const times = (k, fn) => Promise.all(Array.from({ length: k }, fn))
const firsts = (results) => results.filter((r) => !r.duplicate).length

test('recordUpload: the same uploadId ×N at once and again later counts once', async () => {
  const user = 'user_idem_up'
  const project = await insertProject(db, user)
  const all = await times(N, () => client.recordUpload(user, project, 7 * KB, { uploadId: 'same' }))
  assert.equal(firsts(all), 1)
  const retry = await client.recordUpload(user, project, 7 * KB, { uploadId: 'same' })
  assert.deepEqual([retry.duplicate, retry.bytes], [true, 7 * KB])
  const reused = await rejection(client.recordUpload(user, project, 8 * KB, { uploadId: 'same' }))
  assert.deepEqual([reused.code, reused.reason], ['CONFLICT', 'KEY_REUSED'])
  assert.deepEqual(await counters(user), { used: 7 * KB, reserved: 0, ledger: 7 * KB })
})

test('reserveUpload: the same reservationId ×N at once holds once; every answer names the same reservation', async () => {
  const user = 'user_idem_res'
  const project = await insertProject(db, user)
  const id = randomUUID()
  const all = await times(N, () => client.reserveUpload(user, project, 5 * KB, { reservationId: id }))
  assert.equal(firsts(all), 1, 'exactly one is not a duplicate')
  assert.ok(all.every((r) => r.reservationId === id && r.bytes === 5 * KB))
  assert.equal(new Set(all.map((r) => r.expiresAt.getTime())).size, 1, 'the original expiry every time')
  const retry = await client.reserveUpload(user, project, 5 * KB, { reservationId: id })
  assert.equal(retry.duplicate, true)
  const reused = await rejection(client.reserveUpload(user, project, 6 * KB, { reservationId: id }))
  assert.deepEqual([reused.code, reused.reason], ['CONFLICT', 'KEY_REUSED'])
  assert.deepEqual(await counters(user), { used: 0, reserved: 5 * KB, ledger: 0 })
  // Retried after it was committed: still the same reservation, nothing held again.
  await client.commitUpload(user, id)
  const late = await client.reserveUpload(user, project, 5 * KB, { reservationId: id })
  assert.equal(late.duplicate, true)
  assert.deepEqual(await counters(user), { used: 5 * KB, reserved: 0, ledger: 5 * KB })
})

test('reservation ids are scoped to the user: another user choosing the same id learns nothing', async () => {
  const [alice, bob] = ['user_idem_alice', 'user_idem_bob']
  const [pa, pb] = [await insertProject(db, alice), await insertProject(db, bob)]
  const id = randomUUID()
  const mine = await client.reserveUpload(alice, pa, 3 * KB, { reservationId: id })
  // Bob probes Alice's id: on commit/cancel it is simply not his (NOT_FOUND, as for any unknown id).
  const probes = [
    await rejection(client.commitUpload(bob, id)),
    await rejection(client.cancelUpload(bob, id)),
    await rejection(client.commitUpload(bob, randomUUID())),
  ]
  assert.deepEqual(probes.map((e) => e.code), ['NOT_FOUND', 'NOT_FOUND', 'NOT_FOUND'])
  assert.equal(probes[0].message.replace(id, 'X'), probes[2].message.replace(/[0-9a-f-]{36}/, 'X'), 'the same words for a foreign and an unknown id')
  // … and reserving with it makes his own reservation, as with any fresh id.
  const his = await client.reserveUpload(bob, pb, 4 * KB, { reservationId: id })
  assert.deepEqual([his.duplicate, his.userId, his.bytes], [false, bob, 4 * KB])
  await client.commitUpload(bob, id)
  const hers = await client.commitUpload(alice, id, 2 * KB)
  assert.deepEqual([hers.userId, hers.committedBytes, hers.duplicate], [alice, 2 * KB, false])
  assert.equal(mine.reservationId, id)
  assert.deepEqual(await counters(alice), { used: 2 * KB, reserved: 0, ledger: 2 * KB })
  assert.deepEqual(await counters(bob), { used: 4 * KB, reserved: 0, ledger: 4 * KB })
})

test('commitUpload ×N at once and retried later: one commit, the rest duplicate with the same outcome', async () => {
  const user = 'user_idem_commit'
  const project = await insertProject(db, user)
  const held = await client.reserveUpload(user, project, 9 * KB)
  const all = await times(N, () => client.commitUpload(user, held.reservationId, 6 * KB))
  assert.equal(firsts(all), 1)
  assert.ok(all.every((r) => r.status === 'committed' && r.committedBytes === 6 * KB))
  const retry = await client.commitUpload(user, held.reservationId, 6 * KB)
  assert.deepEqual([retry.duplicate, retry.status, retry.committedBytes], [true, 'committed', 6 * KB])
  const other = await rejection(client.commitUpload(user, held.reservationId, 7 * KB))
  assert.deepEqual([other.code, other.reason], ['CONFLICT', 'KEY_REUSED'])
  const cancel = await rejection(client.cancelUpload(user, held.reservationId))
  assert.deepEqual([cancel.code, cancel.reason], ['CONFLICT', 'ALREADY_SETTLED'])
  assert.deepEqual(await counters(user), { used: 6 * KB, reserved: 0, ledger: 6 * KB })
})

test('cancelUpload ×N at once and retried later: released once; a commit after it is ALREADY_SETTLED', async () => {
  const user = 'user_idem_cancel'
  const project = await insertProject(db, user)
  const held = await client.reserveUpload(user, project, 9 * KB)
  const all = await times(N, () => client.cancelUpload(user, held.reservationId))
  assert.equal(firsts(all), 1)
  assert.ok(all.every((r) => r.status === 'cancelled'))
  assert.equal((await client.cancelUpload(user, held.reservationId)).duplicate, true)
  const commit = await rejection(client.commitUpload(user, held.reservationId))
  assert.deepEqual([commit.code, commit.reason], ['CONFLICT', 'ALREADY_SETTLED'])
  assert.deepEqual(await counters(user), { used: 0, reserved: 0, ledger: 0 })
})

test('commit and cancel of one reservation racing: exactly one wins, the counters add up', async () => {
  const user = 'user_idem_race'
  const project = await insertProject(db, user)
  for (let round = 0; round < 5; round++) {
    const held = await client.reserveUpload(user, project, KB)
    const results = await Promise.allSettled([
      ...Array.from({ length: 4 }, () => client.commitUpload(user, held.reservationId)),
      ...Array.from({ length: 4 }, () => client.cancelUpload(user, held.reservationId)),
    ])
    const won = results.filter((r) => r.status === 'fulfilled').map((r) => r.value.status)
    assert.equal(new Set(won).size, 1, `one outcome, got ${won}`)
    for (const r of results.filter((r) => r.status === 'rejected')) assert.equal(r.reason.reason, 'ALREADY_SETTLED')
  }
  const c = await counters(user)
  assert.equal(c.reserved, 0)
  assert.equal(c.used, c.ledger)
})

test('recordDeletion: the same deletionId ×N releases once; reused for another project or size is KEY_REUSED', async () => {
  const user = 'user_idem_del'
  const [a, b] = [await insertProject(db, user), await insertProject(db, user)]
  await client.recordUpload(user, a, 20 * KB, { uploadId: 'a' })
  await client.recordUpload(user, b, 20 * KB, { uploadId: 'b' })
  const all = await times(N, () => client.recordDeletion(user, a, 5 * KB, { deletionId: 'del-1' }))
  assert.equal(firsts(all), 1)
  assert.ok(all.every((r) => r.releasedBytes === 5 * KB))
  const otherProject = await rejection(client.recordDeletion(user, b, 5 * KB, { deletionId: 'del-1' }))
  assert.deepEqual([otherProject.code, otherProject.reason], ['CONFLICT', 'KEY_REUSED'])
  const otherSize = await rejection(client.recordDeletion(user, a, 6 * KB, { deletionId: 'del-1' }))
  assert.deepEqual([otherSize.code, otherSize.reason], ['CONFLICT', 'KEY_REUSED'])
  // A clamped release is the same request when retried (the original asked for more than was counted).
  const wipe = await client.recordDeletion(user, b, 500 * KB, { deletionId: 'wipe-b' })
  const again = await client.recordDeletion(user, b, 500 * KB, { deletionId: 'wipe-b' })
  assert.deepEqual([wipe.releasedBytes, again.duplicate, again.releasedBytes], [20 * KB, true, 20 * KB])
  assert.deepEqual(await counters(user), { used: 15 * KB, reserved: 0, ledger: 15 * KB })
})

test('deleting one upload by id ×N at once releases it once', async () => {
  const user = 'user_idem_delup'
  const project = await insertProject(db, user)
  await client.recordUpload(user, project, 11 * KB, { uploadId: 'x' })
  const all = await times(N, () => client.recordDeletion(user, project, undefined, { uploadId: 'x' }))
  assert.equal(firsts(all), 1)
  assert.deepEqual(await counters(user), { used: 0, reserved: 0, ledger: 0 })
})

test('another user\'s upload and deletion keys are theirs: the same key is a fresh one for me', async () => {
  const [alice, bob] = ['user_idem_k1', 'user_idem_k2']
  const [pa, pb] = [await insertProject(db, alice), await insertProject(db, bob)]
  await client.recordUpload(alice, pa, 3 * KB, { uploadId: 'shared-key' })
  const mine = await client.recordUpload(bob, pb, 4 * KB, { uploadId: 'shared-key' })
  assert.equal(mine.duplicate, false)
  await client.recordDeletion(alice, pa, KB, { deletionId: 'shared-del' })
  const del = await client.recordDeletion(bob, pb, 2 * KB, { deletionId: 'shared-del' })
  assert.deepEqual([del.duplicate, del.releasedBytes], [false, 2 * KB])
})

test('commitUpload and cancelUpload require the owner: no user id is INVALID_ARGUMENT, nothing settled', async () => {
  const user = 'user_idem_owner'
  const project = await insertProject(db, user)
  const held = await client.reserveUpload(user, project, KB)
  assert.equal((await rejection(client.commitUpload(held.reservationId))).code, 'INVALID_ARGUMENT')
  assert.equal((await rejection(client.cancelUpload(held.reservationId))).code, 'INVALID_ARGUMENT')
  assert.deepEqual(await counters(user), { used: 0, reserved: KB, ledger: 0 })
})
