// The s3 backend against a real S3-compatible server (moto, started on a local port): every
// lifecycle call, presigned uploads checked at commit (signature and expiry verified here, since
// moto checks neither), copy, remove, reconcile, a project's files, retries and credentials.
// Moves between backends: storage-s3-move.test.mjs.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { inspect } from 'node:util'
import { createClient, ReservationSchema } from '../index.js'
import { createTestDatabase, insertProject, rejection } from './helpers/db.mjs'
import { cancel, checkPresignedUrl, commit, s3Fixture, SECRET_ACCESS_KEY, skipWithoutMoto as skip } from './helpers/s3.mjs'

const { db, bucket, s3, local, keyOf, put, usedBytes } = skip
  ? {}
  : await s3Fixture('s3obj', { createClient, createTestDatabase })
const PREFIX = 'projects'

test('a presigned upload: signed for the host it is PUT to, expiring with the reservation, charged its real size', { skip }, async () => {
  const user = 'user_presign'
  const project = await insertProject(db, user)
  const body = randomBytes(3000)
  const hold = await s3.reserveUpload(user, project, 4000, { presign: true, fileName: 'renders/frame 01.png', ttlMs: 600_000 })
  ReservationSchema.parse(hold)
  assert.equal(hold.fileName, 'renders/frame 01.png')
  assert.equal(hold.objectPath, `s3://${bucket.bucket}/${keyOf(user, project, 'renders/frame 01.png')}`)

  const url = new URL(hold.uploadUrl)
  assert.equal(url.origin, bucket.endpoint, 'signed for the host the client PUTs to')
  assert.equal(url.pathname, `/${bucket.bucket}/${keyOf(user, project, 'renders/frame%2001.png')}`)
  const signed = checkPresignedUrl(hold.uploadUrl)
  assert.equal(signed.signedHeaders, 'host')
  assert.ok(signed.credential.startsWith('AKIATESTSTORAGEQUOTA/'))
  // Expires with the reservation (whole seconds, never after it).
  assert.ok(signed.expiresAt <= hold.expiresAt, `${signed.expiresAt.toISOString()} > ${hold.expiresAt.toISOString()}`)
  assert.ok(hold.expiresAt - signed.expiresAt < 2000, 'the URL lives as long as the reservation')
  assert.ok(!hold.uploadUrl.includes(SECRET_ACCESS_KEY))

  await put(hold.uploadUrl, body)
  const settled = await commit(s3, user, hold.reservationId)
  assert.equal(settled.status, 'committed')
  assert.equal(settled.committedBytes, 3000, 'charged what HEAD says, not the 4000 held')
  assert.equal(settled.usedBytes, 3000)
  assert.deepEqual(await bucket.get(keyOf(user, project, 'renders/frame%2001.png')), body)
  assert.deepEqual(await s3.diskUsage(user, project), { bytes: 3000, allocatedBytes: 3000, files: 1, directories: 0, skipped: 0 })
})

test('the signature check can fail: a tampered or re-hosted URL does not verify', { skip }, async () => {
  const user = 'user_tamper'
  const project = await insertProject(db, user)
  const hold = await s3.reserveUpload(user, project, 10, { presign: true, fileName: 'a.bin' })
  const tampered = new URL(hold.uploadUrl)
  tampered.pathname = tampered.pathname.replace('a.bin', 'b.bin')
  assert.throws(() => checkPresignedUrl(tampered.toString()), /does not verify/)
  const rehosted = hold.uploadUrl.replace('127.0.0.1', 'localhost')
  assert.throws(() => checkPresignedUrl(rehosted), /does not verify/)
  assert.throws(() => checkPresignedUrl(hold.uploadUrl, 'another-secret'), /does not verify/)
  await cancel(s3, user, hold.reservationId)
})

test('an upload larger than fits is refused at commit and its object deleted', { skip }, async () => {
  const user = 'user_liar'
  const project = await insertProject(db, user)
  await s3.allocateProjectPath(user, project)
  await s3.setQuotaLimit(user, 10_000)
  const hold = await s3.reserveUpload(user, project, 1000, { presign: true, fileName: 'big.bin' })
  // The URL signs only the host: nothing stops the client from PUTting more than it declared.
  await put(hold.uploadUrl, randomBytes(50_000))
  assert.equal((await bucket.objects(keyOf(user, project)))[keyOf(user, project, 'big.bin')], 50_000)
  const error = await rejection(commit(s3, user, hold.reservationId))
  assert.equal(error.code, 'QUOTA_EXCEEDED')
  assert.deepEqual(await bucket.objects(keyOf(user, project)), {}, 'the oversize object is gone')
  assert.equal(await usedBytes(user), 0)

  // Larger than declared but within the quota: charged the real size.
  const second = await s3.reserveUpload(user, project, 1000, { presign: true, fileName: 'ok.bin' })
  await put(second.uploadUrl, randomBytes(6000))
  assert.equal((await commit(s3, user, second.reservationId)).committedBytes, 6000)
  assert.equal(await usedBytes(user), 6000)
})

test('commit before the PUT is a CONFLICT and keeps the reservation; presign needs a file name and an object store', { skip }, async () => {
  const user = 'user_early'
  const project = await insertProject(db, user)
  const hold = await s3.reserveUpload(user, project, 100, { presign: true, fileName: 'x.bin' })
  const error = await rejection(commit(s3, user, hold.reservationId))
  assert.equal(error.code, 'CONFLICT')
  assert.equal(error.reason, 'MISMATCH')
  await put(hold.uploadUrl, randomBytes(100))
  assert.equal((await commit(s3, user, hold.reservationId)).committedBytes, 100)

  for (const options of [{ presign: true }, { fileName: 'a' }, { presign: true, fileName: '../x' }, { presign: true, fileName: '/abs' }, { presign: true, fileName: 'a/./b' }]) {
    const bad = await rejection(s3.reserveUpload(user, project, 1, options))
    assert.equal(bad.code, 'INVALID_ARGUMENT', JSON.stringify(options))
  }
  assert.equal((await s3.getUsage(user)).reservedBytes, 0, 'a refused presign holds nothing')
  const onDisk = await insertProject(db, 'user_disk_presign')
  await local.allocateProjectPath('user_disk_presign', onDisk)
  const refused = await rejection(local.reserveUpload('user_disk_presign', onDisk, 1, { presign: true, fileName: 'a' }))
  assert.equal(refused.code, 'STORAGE_ERROR')
  assert.equal((await local.getUsage('user_disk_presign')).reservedBytes, 0)
})

test('expired and cancelled presigned uploads lose their objects; a later committed upload of the same name stays', { skip }, async () => {
  const user = 'user_sweep'
  const project = await insertProject(db, user)
  const expired = await s3.reserveUpload(user, project, 100, { presign: true, fileName: 'late.bin' })
  await put(expired.uploadUrl, randomBytes(100))
  const cancelled = await s3.reserveUpload(user, project, 100, { presign: true, fileName: 'cancelled.bin' })
  await put(cancelled.uploadUrl, randomBytes(100))
  await cancel(s3, user, cancelled.reservationId)
  assert.equal(keyOf(user, project, 'cancelled.bin') in (await bucket.objects(keyOf(user, project))), false)

  // Two holds on one name; the second uploads and commits after the first was made: when the
  // first expires, the object is the second's, not the sweep's to delete.
  const stale = await s3.reserveUpload(user, project, 100, { presign: true, fileName: 'kept.bin' })
  const kept = await s3.reserveUpload(user, project, 100, { presign: true, fileName: 'kept.bin' })
  await put(kept.uploadUrl, randomBytes(100))
  await db.query(`UPDATE quota_reservations SET expires_at = now() - interval '1 second' WHERE id = ANY($1)`, [
    [expired.reservationId, stale.reservationId],
  ])
  await commit(s3, user, kept.reservationId)
  assert.equal((await rejection(commit(s3, user, expired.reservationId))).code, 'RESERVATION_EXPIRED')

  await s3.sweepExpiredReservations()
  const left = await bucket.objects(keyOf(user, project))
  assert.deepEqual(Object.keys(left), [keyOf(user, project, 'kept.bin')])
  const { rows } = await db.query('SELECT count(*)::int AS n FROM quota_reservations WHERE project_id = $1 AND object_key IS NOT NULL AND status <> $2', [project, 'committed'])
  assert.equal(rows[0].n, 0, 'swept reservations forget their objects')
})

test('copyProject copies server-side; removeProject deletes the prefix; reconcile lists the bucket', { skip }, async () => {
  const user = 'user_copy_s3'
  const source = await insertProject(db, user)
  const target = await insertProject(db, user)
  for (const [name, size] of [['a.bin', 1200], ['deep/b.bin', 34]]) {
    const hold = await s3.reserveUpload(user, source, size, { presign: true, fileName: name })
    await put(hold.uploadUrl, randomBytes(size))
    await commit(s3, user, hold.reservationId)
  }
  const copy = await s3.copyProject(user, source, target)
  assert.equal(copy.copiedBytes, 1234)
  assert.equal(await usedBytes(user), 2468)
  const objects = await bucket.objects(`${PREFIX}/${user}/`)
  for (const name of ['a.bin', 'deep/b.bin']) {
    assert.deepEqual(await bucket.get(keyOf(user, target, name)), await bucket.get(keyOf(user, source, name)))
  }
  assert.equal(Object.keys(objects).length, 4)
  assert.equal((await rejection(s3.copyProject(user, target, source))).reason, 'TARGET_NOT_EMPTY')

  // Drift: an object written behind the library's back shows up in the stored bytes.
  await bucket.put(keyOf(user, target, 'sneaked.bin'), randomBytes(500))
  const report = await s3.reconcile(user, { disk: true })
  const row = report.users[0].projects.find((p) => p.projectId === target)
  assert.equal(row.diskBytes, 1734)
  assert.equal(row.diskDriftBytes, 500)
  assert.equal(row.path, `s3://${bucket.bucket}/${keyOf(user, target)}`)

  await s3.removeProject(user, target)
  assert.deepEqual(Object.keys(await bucket.objects(keyOf(user, target))), [])
  assert.equal(Object.keys(await bucket.objects(keyOf(user, source))).length, 2, 'the source is untouched')
  assert.equal(await usedBytes(user), 1234)
})

test('credentials never appear in errors or when the client is inspected', { skip }, async () => {
  const missing = createClient({ databaseUrl: db.url, storage: { ...bucket.storage(), bucket: 'no-such-bucket-here' }, logger: false })
  try {
    const user = 'user_creds'
    const project = await insertProject(db, user)
    await db.query(
      `INSERT INTO project_storage_paths (project_id, user_id, quota_id, backend, key, path)
       SELECT $1, $2, q.id, 's3', $2 || '/' || $1 || '/', 's3://no-such-bucket-here/' || $2 || '/' || $1 || '/'
         FROM user_quotas q WHERE q.user_id = $2`,
      [project, user],
    ).catch(async () => {
      await missing.allocateProjectPath(user, project)
    })
    const error = await rejection(missing.diskUsage(user, project))
    assert.equal(error.code, 'STORAGE_ERROR')
    for (const text of [error.message, inspect(error), inspect(missing), JSON.stringify(error)]) {
      assert.ok(!text.includes(SECRET_ACCESS_KEY), text)
    }
  } finally {
    await missing.close()
  }
})

test('listProjectFiles and deleteProjectFile work the same on s3 and on disk, with measured bytes', { skip }, async () => {
  const user = 'user_files'
  const onS3 = await insertProject(db, user)
  const onDisk = await insertProject(db, user)
  const hold = await s3.reserveUpload(user, onS3, 900, { presign: true, fileName: 'docs/a.pdf' })
  await put(hold.uploadUrl, randomBytes(900))
  await commit(s3, user, hold.reservationId)
  const dir = (await local.allocateProjectPath(user, onDisk)).path
  await mkdir(join(dir, 'docs'))
  await writeFile(join(dir, 'docs', 'a.pdf'), randomBytes(300))
  await local.recordUpload(user, onDisk, 300)
  assert.equal(await usedBytes(user), 1200)

  assert.deepEqual(await s3.listProjectFiles(user, onS3), [{ path: 'docs/a.pdf', bytes: 900 }])
  // The s3 client reads the local record from its storageRoot: the record decides the backend.
  assert.deepEqual(await s3.listProjectFiles(user, onDisk), [{ path: 'docs/a.pdf', bytes: 300 }])
  assert.equal((await rejection(s3.listProjectFiles('user_other', onS3))).code, 'FORBIDDEN')

  const released = await s3.deleteProjectFile(user, onS3, 'docs/a.pdf', { deletionId: 'del-1' })
  assert.equal(released.releasedBytes, 900, 'the measured size, whatever a caller would have said')
  assert.deepEqual(await bucket.objects(keyOf(user, onS3)), {})
  assert.equal((await local.deleteProjectFile(user, onDisk, 'docs/a.pdf')).releasedBytes, 300)
  await assert.rejects(readFile(join(dir, 'docs', 'a.pdf')), { code: 'ENOENT' })
  assert.equal(await usedBytes(user), 0)
  assert.equal((await rejection(s3.deleteProjectFile(user, onS3, 'docs/a.pdf'))).code, 'NOT_FOUND')
  assert.equal((await rejection(s3.deleteProjectFile(user, onS3, '../escape'))).code, 'INVALID_ARGUMENT')
})

test('a presigned upload to a name that already holds a file is refused before anything is held', { skip }, async () => {
  const user = 'user_exists'
  const project = await insertProject(db, user)
  const first = await s3.reserveUpload(user, project, 100, { presign: true, fileName: 'same.bin' })
  await put(first.uploadUrl, randomBytes(100))
  await commit(s3, user, first.reservationId)
  const error = await rejection(s3.reserveUpload(user, project, 100, { presign: true, fileName: 'same.bin' }))
  assert.equal(error.code, 'CONFLICT')
  assert.equal(error.reason, 'FILE_EXISTS')
  assert.equal((await s3.getUsage(user)).reservedBytes, 0)
  await s3.deleteProjectFile(user, project, 'same.bin')
  const again = await s3.reserveUpload(user, project, 100, { presign: true, fileName: 'same.bin' })
  await put(again.uploadUrl, randomBytes(50))
  assert.equal((await commit(s3, user, again.reservationId)).committedBytes, 50)
  assert.equal(await usedBytes(user), 50)
})

test('a sweep by a client without the bucket settles reservations and leaves their objects to one with it', { skip }, async () => {
  const user = 'user_sweep_local'
  const project = await insertProject(db, user)
  const hold = await s3.reserveUpload(user, project, 100, { presign: true, fileName: 'orphan.bin' })
  await put(hold.uploadUrl, randomBytes(100))
  await db.query(`UPDATE quota_reservations SET expires_at = now() - interval '1 second' WHERE id = $1`, [hold.reservationId])
  await local.sweepExpiredReservations()
  assert.equal((await s3.getUsage(user)).reservedBytes, 0, 'the bytes are back')
  assert.deepEqual(Object.keys(await bucket.objects(keyOf(user, project))), [keyOf(user, project, 'orphan.bin')])
  await s3.sweepExpiredReservations()
  assert.deepEqual(await bucket.objects(keyOf(user, project)), {})
})

test('a copy on s3 that fails after its objects were copied leaves none of them, and no charge', { skip }, async () => {
  const user = 'user_copy_undo'
  const source = await insertProject(db, user)
  const target = await insertProject(db, user)
  const hold = await s3.reserveUpload(user, source, 700, { presign: true, fileName: 'a.bin' })
  await put(hold.uploadUrl, randomBytes(700))
  await commit(s3, user, hold.reservationId)
  // The target is recorded on local disk: the copy's objects land, then recording the target's
  // path fails, and the undo must take the objects back.
  await local.allocateProjectPath(user, target)
  const before = await s3.getUsage(user)
  const error = await rejection(s3.copyProject(user, source, target))
  assert.equal(error.code, 'STORAGE_ERROR')
  assert.deepEqual(await bucket.objects(keyOf(user, target)), {}, 'no copied object stays')
  assert.deepEqual(await s3.getUsage(user), before, 'nothing charged or held')
  const { rows } = await db.query('SELECT count(*)::int AS n FROM quota_project_copies WHERE project_id = $1', [target])
  assert.equal(rows[0].n, 0, 'the claim is released')
})

test('a failing store is a STORAGE_ERROR within seconds, not after a minute of retries', { skip }, async () => {
  const { createServer } = await import('node:http')
  // Answers every request with 503 SlowDown, which S3 clients retry with backoff.
  let requests = 0
  const server = createServer((req, res) => {
    requests += 1
    res.writeHead(503, { 'content-type': 'application/xml' }).end('<Error><Code>SlowDown</Code></Error>')
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const down = createClient({
    databaseUrl: db.url,
    storage: { ...bucket.storage(), endpoint: `http://127.0.0.1:${server.address().port}` },
    logger: false,
  })
  try {
    const started = performance.now()
    const error = await rejection(down.diskUsage('user_down', '3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b'))
    const ms = performance.now() - started
    assert.equal(error.code, 'STORAGE_ERROR')
    assert.ok(ms < 10_000, `gave up after ${Math.round(ms)} ms`)
    assert.equal(requests, 4, 'one request and three retries')
    assert.ok(!error.message.includes(SECRET_ACCESS_KEY))
  } finally {
    await down.close()
    await new Promise((resolve) => server.close(resolve))
  }
})

test('in shadow mode an oversize presigned upload is counted, never deleted', { skip }, async () => {
  const shadow = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, storage: bucket.storage(PREFIX), mode: 'shadow', logger: false })
  try {
    const user = 'user_shadow_s3'
    const project = await insertProject(db, user)
    await shadow.allocateProjectPath(user, project)
    await shadow.setQuotaLimit(user, 10_000)
    const hold = await shadow.reserveUpload(user, project, 100, { presign: true, fileName: 'big.bin' })
    await put(hold.uploadUrl, randomBytes(50_000))
    const settled = await commit(shadow, user, hold.reservationId)
    assert.equal(settled.committedBytes, 50_000, 'shadow mode counts what arrived and refuses nothing')
    assert.equal(settled.usedBytes, 50_000)
    assert.equal((await bucket.objects(keyOf(user, project)))[keyOf(user, project, 'big.bin')], 50_000, 'the object stays')
  } finally {
    await shadow.close()
  }
})

test('a reservation id another user also chose does not mix their uploads', { skip }, async () => {
  const { randomUUID } = await import('node:crypto')
  const [alice, bob] = ['user_s3_same_a', 'user_s3_same_b']
  const [pa, pb] = [await insertProject(db, alice), await insertProject(db, bob)]
  const id = randomUUID()
  const hers = await s3.reserveUpload(alice, pa, 100, { presign: true, fileName: 'a.bin', reservationId: id })
  const his = await s3.reserveUpload(bob, pb, 300, { reservationId: id })
  await put(hers.uploadUrl, randomBytes(80))
  assert.equal((await commit(s3, bob, his.reservationId)).committedBytes, 300, 'his commit is his: no HEAD of her object')
  assert.equal((await commit(s3, alice, id)).committedBytes, 80, 'hers is charged what she uploaded')
  // His settled reservation cannot be cancelled, and trying must not touch her object.
  assert.equal((await rejection(cancel(s3, bob, id))).reason, 'ALREADY_SETTLED')
  assert.equal((await bucket.objects(keyOf(alice, pa)))[keyOf(alice, pa, 'a.bin')], 80)
})
