// Moving projects between local disk and a real S3-compatible server (moto): byte for byte
// both ways, multipart for large files, refused while an upload is in flight, resumed after an
// interruption, the CLI, and names the library refuses.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createClient, MovedProjectSchema } from '../index.js'
import { createTestDatabase, insertProject, rejection } from './helpers/db.mjs'
import { ACCESS_KEY_ID, cancel, s3Fixture, SECRET_ACCESS_KEY, skipWithoutMoto as skip } from './helpers/s3.mjs'

const { db, bucket, s3, local, keyOf } = skip ? {} : await s3Fixture('s3move', { createClient, createTestDatabase })
const MB = 1024 * 1024
const PREFIX = 'projects'

async function tree(dir) {
  const out = {}
  async function walk(rel) {
    for (const entry of await readdir(join(dir, rel), { withFileTypes: true })) {
      const path = rel ? `${rel}/${entry.name}` : entry.name
      if (entry.isDirectory()) await walk(path)
      else out[path] = await readFile(join(dir, path))
    }
  }
  await walk('')
  return out
}

test('moveProjectStorage: local → s3 → local byte for byte, usage unchanged, multipart for a large file', { skip }, async () => {
  const user = 'user_mover_s3'
  const project = await insertProject(db, user)
  const dir = (await local.allocateProjectPath(user, project)).path
  const files = { 'small.txt': randomBytes(10), 'nested/deep/large.bin': randomBytes(9 * MB + 123), 'empty': Buffer.alloc(0) }
  for (const [name, content] of Object.entries(files)) {
    await mkdir(join(dir, name, '..'), { recursive: true })
    await writeFile(join(dir, name), content)
  }
  const total = Object.values(files).reduce((n, b) => n + b.length, 0)
  await local.recordUpload(user, project, total, { uploadId: 'seed' })
  const before = await s3.getUsage(user)

  const moved = await s3.moveProjectStorage(user, project, { to: 's3' })
  MovedProjectSchema.parse(moved)
  assert.equal(moved.from, 'local')
  assert.equal(moved.path.backend, 's3')
  assert.equal(moved.path.path, `s3://${bucket.bucket}/${keyOf(user, project)}`)
  assert.deepEqual([moved.files, moved.bytes, moved.copiedFiles, moved.alreadyMoved], [3, total, 3, false])
  for (const [name, content] of Object.entries(files)) assert.deepEqual(await bucket.get(keyOf(user, project, name)), content, name)
  const head = await bucket.head(keyOf(user, project, 'nested/deep/large.bin'))
  assert.match(head.get('etag'), /-2"$/, 'the 9 MiB file went up in two parts')
  await assert.rejects(readdir(dir), { code: 'ENOENT' }, 'the source directory is gone')
  assert.deepEqual(await s3.getUsage(user), before, 'usage unchanged')
  assert.equal((await s3.allocateProjectPath(user, project)).backend, 's3')
  assert.equal((await rejection(local.allocateProjectPath(user, project))).code, 'STORAGE_ERROR')

  const back = await s3.moveProjectStorage(user, project, { to: 'local' })
  assert.equal(back.path.backend, 'local')
  assert.equal(back.path.path, `${db.storageRoot}/${user}/${project}/`)
  assert.deepEqual(await tree(back.path.path), files)
  assert.deepEqual(await bucket.objects(keyOf(user, project)), {}, 'the objects are gone')
  assert.deepEqual(await s3.getUsage(user), before)
  assert.equal((await local.allocateProjectPath(user, project)).backend, 'local')
})

test('a move is refused while an upload is in flight, and resumes after an interruption', { skip }, async () => {
  const user = 'user_resume'
  const project = await insertProject(db, user)
  const dir = (await local.allocateProjectPath(user, project)).path
  await writeFile(join(dir, 'a.bin'), randomBytes(2000))
  await writeFile(join(dir, 'b.bin'), randomBytes(3000))

  const hold = await local.reserveUpload(user, project, 10)
  const error = await rejection(s3.moveProjectStorage(user, project, { to: 's3' }))
  assert.equal(error.code, 'CONFLICT')
  assert.equal(error.reason, 'UPLOAD_IN_FLIGHT')
  assert.deepEqual(await bucket.objects(keyOf(user, project)), {}, 'nothing copied')
  assert.equal((await local.allocateProjectPath(user, project)).backend, 'local')
  await cancel(local, user, hold.reservationId)

  // An earlier attempt stopped midway: a.bin copied, a half object of b.bin, a stale file.
  await bucket.put(keyOf(user, project, 'a.bin'), await readFile(join(dir, 'a.bin')))
  await bucket.put(keyOf(user, project, 'b.bin'), randomBytes(10))
  await bucket.put(keyOf(user, project, 'gone.bin'), randomBytes(7))
  const resumed = await s3.moveProjectStorage(user, project, { to: 's3' })
  assert.equal(resumed.copiedFiles, 1, 'only b.bin was copied again')
  assert.deepEqual(await bucket.objects(keyOf(user, project)), { [keyOf(user, project, 'a.bin')]: 2000, [keyOf(user, project, 'b.bin')]: 3000 })

  // Stopped after the flip, before the source was deleted: running it again finishes.
  await mkdir(dir, { recursive: true })
  await writeFile(join(dir, 'leftover'), 'x')
  const again = await s3.moveProjectStorage(user, project, { to: 's3' })
  assert.equal(again.alreadyMoved, true)
  await assert.rejects(readdir(dir), { code: 'ENOENT' })

  for (const bad of [{ to: 'gcs' }, {}, undefined]) {
    assert.equal((await rejection(s3.moveProjectStorage(user, project, bad))).code, 'INVALID_ARGUMENT')
  }
  assert.equal((await rejection(local.moveProjectStorage(user, project, { to: 'local' }))).code, 'STORAGE_ERROR', 'a local-only client cannot reach the bucket')
  assert.equal((await rejection(s3.moveProjectStorage('user_other', project, { to: 'local' }))).code, 'FORBIDDEN')
})

test('storage-quota move runs the same move from a deploy shell, credentials from the environment', { skip }, async () => {
  const { execFile } = await import('node:child_process')
  const { promisify } = await import('node:util')
  const user = 'user_cli_move'
  const project = await insertProject(db, user)
  const dir = (await local.allocateProjectPath(user, project)).path
  const content = randomBytes(777)
  await writeFile(join(dir, 'f.bin'), content)
  const bin = new URL('../bin/storage-quota.js', import.meta.url).pathname
  const env = { ...process.env, AWS_ACCESS_KEY_ID: ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: SECRET_ACCESS_KEY, STORAGE_BACKEND: '' }
  const args = ['--database-url', db.url, '--storage-root', db.storageRoot, '--bucket', bucket.bucket, '--prefix', PREFIX, '--endpoint', bucket.endpoint, '--region', 'us-east-1']
  const { stdout, stderr } = await promisify(execFile)(process.execPath, [bin, 'move', user, project, '--to', 's3', ...args], { env })
  assert.match(stdout, new RegExp(`^moved ${project} from local to s3 \\(s3://${bucket.bucket}/${PREFIX}/${user}/${project}/\\): 1 file\\(s\\), 777 bytes, 1 file\\(s\\) copied$`, 'm'))
  assert.deepEqual(await bucket.get(keyOf(user, project, 'f.bin')), content)
  const failed = await promisify(execFile)(process.execPath, [bin, 'move', user, project, '--to', 'gcs', ...args], { env }).catch((e) => e)
  assert.equal(failed.code, 1)
  assert.match(failed.stderr, /INVALID_ARGUMENT/)
  for (const text of [stdout, stderr, failed.stderr]) assert.ok(!text.includes(SECRET_ACCESS_KEY))
})

test('a project holding a name the library refuses does not move, and stays where it was', { skip }, async () => {
  const user = 'user_badname'
  const project = await insertProject(db, user)
  const dir = (await local.allocateProjectPath(user, project)).path
  await writeFile(join(dir, 'ok.bin'), randomBytes(10))
  await writeFile(join(dir, 'trailing-dot.'), randomBytes(10)) // Windows would strip the dot
  const error = await rejection(s3.moveProjectStorage(user, project, { to: 's3' }))
  assert.equal(error.code, 'INVALID_ARGUMENT')
  assert.match(error.message, /trailing-dot\./)
  assert.equal((await local.allocateProjectPath(user, project)).backend, 'local')
  assert.deepEqual((await readdir(dir)).sort(), ['ok.bin', 'trailing-dot.'])
})
