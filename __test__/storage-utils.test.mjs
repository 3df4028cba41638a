// projectPathFor, validatePath and diskUsage on the local backend.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { access, link, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { createClient, DiskUsageSchema, PathCheckSchema } from '../index.js'
import { createTestDatabase, insertProject, rejection } from './helpers/db.mjs'

const db = await createTestDatabase('utils')
const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
await client.migrate()
const outside = await mkdtemp(join(tmpdir(), 'sq-outside-'))
after(async () => {
  await client.close()
  await rm(outside, { recursive: true, force: true })
})

test('projectPathFor is what allocateProjectPath returns, computed without database or disk', async () => {
  const user = 'user_pure'
  const project = await insertProject(db, user)
  const predicted = client.projectPathFor(user, project)
  const allocated = await client.allocateProjectPath(user, project)
  assert.deepEqual(predicted, { backend: 'local', key: allocated.key, path: allocated.path })

  const scratch = await mkdtemp(join(tmpdir(), 'sq-pure-'))
  const offline = createClient({ databaseUrl: 'postgres://nobody@127.0.0.1:1/none', storageRoot: join(scratch, 'root') })
  try {
    const id = randomUUID()
    assert.equal(offline.projectPathFor('user_x', id).path, `${scratch}/root/user_x/${id}/`)
    await assert.rejects(access(join(scratch, 'root')), { code: 'ENOENT' }, 'the root was not created')
  } finally {
    await offline.close()
    await rm(scratch, { recursive: true, force: true })
  }
  assert.throws(() => client.projectPathFor('../x', project), { code: 'INVALID_ARGUMENT' })
})

test('validatePath resolves relative and absolute candidates inside the project', async () => {
  const user = 'user_validate'
  const project = await insertProject(db, user)
  const { path: dir } = await client.allocateProjectPath(user, project)
  const cases = [
    ['report.pdf', 'report.pdf'],
    ['renders/2024 Q1/frame-01.png', 'renders/2024 Q1/frame-01.png'],
    ['a/./b//c', 'a/b/c'],
    ['a/../b', 'b'],
    ['.', ''],
    ['données/café.txt', 'données/café.txt'],
    [`${dir}x/y.bin`, 'x/y.bin'],
    [dir, ''],
    [dir.slice(0, -1), ''],
  ]
  for (const [candidate, relativePath] of cases) {
    const check = await client.validatePath(user, project, candidate)
    PathCheckSchema.parse(check)
    assert.deepEqual(check, { inside: true, path: `${dir}${relativePath}`, relativePath }, candidate)
  }
})

test('validatePath refuses links and files on the way, inside the project too', async () => {
  const user = 'user_links'
  const project = await insertProject(db, user)
  const { path: dir } = await client.allocateProjectPath(user, project)
  await symlink(outside, join(dir, 'escape'))
  await symlink(join(outside, 'secret'), join(dir, 'file-link'))
  await writeFile(join(dir, 'plain.txt'), 'x')
  for (const candidate of ['escape', 'escape/x', 'escape/a/b/c', 'file-link', `${dir}escape/x`, 'plain.txt/x']) {
    const check = await client.validatePath(user, project, candidate)
    assert.equal(check.inside, false, candidate)
    assert.match(check.reason, /symlink|not a directory/)
  }
  assert.equal((await client.validatePath(user, project, 'plain.txt')).inside, true)
  assert.equal((await client.validatePath(user, project, 'new/deeper/file')).inside, true, 'paths that do not exist yet are fine')
})

test('validatePath on a project whose {userId} is a planted link refuses everything', async () => {
  const user = 'user_linked_home'
  const project = randomUUID()
  await symlink(outside, join(db.storageRoot, user))
  const check = await client.validatePath(user, project, 'x')
  assert.equal(check.inside, false)
  assert.match(check.reason, /symlink/)
})

test('validatePath rejects non-string and empty candidates as INVALID_ARGUMENT', async () => {
  const project = randomUUID()
  for (const candidate of ['', null, undefined, 42, ['a']]) {
    assert.equal((await rejection(client.validatePath('user_1', project, candidate))).code, 'INVALID_ARGUMENT')
  }
})

test('diskUsage counts regular files once, never follows links, and reports the tree', async () => {
  const user = 'user_usage'
  const project = await insertProject(db, user)
  const { path: dir } = await client.allocateProjectPath(user, project)
  const empty = await client.diskUsage(user, project)
  assert.deepEqual([empty.bytes, empty.files, empty.directories, empty.skipped], [0, 0, 0, 0])
  await mkdir(join(dir, 'a/b/c'), { recursive: true })
  await writeFile(join(dir, 'one.bin'), Buffer.alloc(1000))
  await writeFile(join(dir, 'a/two.bin'), Buffer.alloc(2000))
  await writeFile(join(dir, 'a/b/c/three.bin'), Buffer.alloc(3))
  await writeFile(join(dir, 'a/b/empty'), '')
  await link(join(dir, 'one.bin'), join(dir, 'a/b/one-again.bin'))
  await writeFile(join(outside, 'huge.bin'), Buffer.alloc(1 << 20))
  await symlink(outside, join(dir, 'a/escape'))
  await symlink(join(outside, 'huge.bin'), join(dir, 'huge-link'))
  const usage = await client.diskUsage(user, project)
  DiskUsageSchema.parse(usage)
  assert.equal(usage.bytes, 3003)
  assert.equal(usage.files, 4)
  assert.equal(usage.directories, 3)
  assert.equal(usage.skipped, 2)
  assert.ok(usage.allocatedBytes > 0 && usage.allocatedBytes < 1 << 20, `allocatedBytes ${usage.allocatedBytes} counts the linked 1 MB file`)
})

test('diskUsage of a project without a directory is zero; a planted link is UNSAFE_PATH', async () => {
  assert.deepEqual(await client.diskUsage('user_nothing', randomUUID()), {
    bytes: 0,
    allocatedBytes: 0,
    files: 0,
    directories: 0,
    skipped: 0,
  })
  const user = 'user_usage_link'
  const project = randomUUID()
  await mkdir(join(db.storageRoot, user))
  await symlink(outside, join(db.storageRoot, user, project))
  assert.equal((await rejection(client.diskUsage(user, project))).code, 'UNSAFE_PATH')
})
