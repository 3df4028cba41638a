// Defence in depth on the local disk: what allocateProjectPath does when the storage tree is
// not what it created (planted links, files, foreign or lax directories, an unusable root).
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { chmod, chown, copyFile, lstat, mkdir, mkdtemp, readdir, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createClient } from '../index.js'
import { createTestDatabase, insertProject, rejection } from './helpers/db.mjs'

const { fromNative } = createRequire(import.meta.url)('../lib/errors.js')

const db = await createTestDatabase('disk')
const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
await client.migrate()
after(() => client.close())

const isRoot = process.getuid() === 0

/** A temporary directory, removed when the test (or, at the top level, the file) ends. */
async function tempDir(prefix) {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  after(async () => {
    await chmod(dir, 0o700)
    await rm(dir, { recursive: true, force: true })
  })
  return dir
}

const NOBODY = 65534
// Made before any test is declared: node:test starts running declared tests at once, and a
// top-level await between declarations could let the file's after-hooks run too early.
const portableBinding = await bindingForNobody()

test('a symlink planted at {root}/{userId}/{projectId} is not followed', async () => {
  const user = 'user_plant2'
  const project = await insertProject(db, user)
  const elsewhere = await tempDir('sq-elsewhere-')
  await mkdir(join(db.storageRoot, user), { mode: 0o700 })
  await symlink(elsewhere, join(db.storageRoot, user, project))
  const error = await rejection(client.allocateProjectPath(user, project))
  assert.equal(error.code, 'UNSAFE_PATH')
  assert.match(error.message, /symlink/)
  assert.deepEqual(await readdir(elsewhere), [], 'nothing was created through the link')
  assert.equal(await readlink(join(db.storageRoot, user, project)), elsewhere, 'the link is left as it was')
})

test('a symlink at {root}/{userId} pointing inside the root is refused too', async () => {
  const user = 'user_plant3'
  const project = await insertProject(db, user)
  await mkdir(join(db.storageRoot, 'user_victim'), { mode: 0o700 })
  await symlink(join(db.storageRoot, 'user_victim'), join(db.storageRoot, user))
  assert.equal((await rejection(client.allocateProjectPath(user, project))).code, 'UNSAFE_PATH')
  assert.deepEqual(await readdir(join(db.storageRoot, 'user_victim')), [])
})

test('a file where {userId} or {projectId} should be a directory is UNSAFE_PATH', async () => {
  const user = 'user_file1'
  const project = await insertProject(db, user)
  await writeFile(join(db.storageRoot, user), 'not a directory')
  assert.equal((await rejection(client.allocateProjectPath(user, project))).code, 'UNSAFE_PATH')

  const user2 = 'user_file2'
  const project2 = await insertProject(db, user2)
  await mkdir(join(db.storageRoot, user2), { mode: 0o700 })
  await writeFile(join(db.storageRoot, user2, project2), 'not a directory')
  assert.equal((await rejection(client.allocateProjectPath(user2, project2))).code, 'UNSAFE_PATH')
  assert.ok((await lstat(join(db.storageRoot, user2, project2))).isFile(), 'the file is left alone')
})

test('directories made earlier with wider permissions are tightened to 0700', async () => {
  const user = 'user_lax'
  const project = await insertProject(db, user)
  await mkdir(join(db.storageRoot, user, project), { recursive: true, mode: 0o777 })
  await chmod(join(db.storageRoot, user), 0o755)
  await chmod(join(db.storageRoot, user, project), 0o777)
  const allocated = await client.allocateProjectPath(user, project)
  assert.equal((await stat(join(db.storageRoot, user))).mode & 0o777, 0o700)
  assert.equal((await stat(allocated.path)).mode & 0o777, 0o700)
})

test('a directory owned by another user is UNSAFE_PATH', { skip: !isRoot && 'needs root to chown' }, async () => {
  const user = 'user_foreign'
  const project = await insertProject(db, user)
  await mkdir(join(db.storageRoot, user), { mode: 0o700 })
  await chown(join(db.storageRoot, user), NOBODY, NOBODY)
  const error = await rejection(client.allocateProjectPath(user, project))
  assert.equal(error.code, 'UNSAFE_PATH')
  assert.match(error.message, /belongs to uid 65534/)
})

/**
 * The addon copied where `nobody` can load it: the checkout may sit under a directory that
 * user cannot enter (CI clones anywhere). Only the generated loader and the binary are needed.
 */
async function bindingForNobody() {
  const dir = await tempDir('sq-binding-')
  await chmod(dir, 0o755)
  const here = fileURLToPath(new URL('..', import.meta.url))
  for (const name of (await readdir(here)).filter((n) => n === 'binding.js' || n.endsWith('.node'))) {
    await copyFile(join(here, name), join(dir, name))
    await chmod(join(dir, name), 0o755)
  }
  return join(dir, 'binding.js')
}

/**
 * Runs `NativeClient[method](...args)` in a separate process without permission on the storage
 * root: as `nobody` when the tests run as root (root ignores permissions), else as ourselves.
 * Resolves to the decoded error, or `{ code: 'RESOLVED' }`.
 */
async function unprivileged(options, method, args) {
  const script = `
    const { NativeClient } = require(${JSON.stringify(portableBinding)})
    const client = new NativeClient(${JSON.stringify(options)})
    client.${method}(...${JSON.stringify(args)})
      .then(() => 'RESOLVED', (e) => JSON.stringify({ code: e.code, message: e.message }))
      .then((message) => { process.stdout.write(message); client.close() })`
  const child = spawn(process.execPath, ['-e', script], {
    ...(isRoot ? { uid: NOBODY, gid: NOBODY } : {}),
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd: tmpdir(),
  })
  let out = ''
  let err = ''
  child.stdout.on('data', (d) => (out += d))
  child.stderr.on('data', (d) => (err += d))
  return new Promise((resolve, reject) => {
    child.on('close', (status) => {
      if (status !== 0) return reject(new Error(`child exited ${status}: ${err}`))
      resolve(out === 'RESOLVED' ? { code: 'RESOLVED' } : fromNative(Object.assign(new Error(), JSON.parse(out))))
    })
  })
}

/** A directory the unprivileged process can enter and read but not write. */
async function readOnlyDir() {
  const dir = await tempDir('sq-ro-')
  await chmod(dir, isRoot ? 0o755 : 0o555)
  return dir
}

test('a storage root that cannot be reached is a clear STORAGE_ERROR', async () => {
  const parent = await tempDir('sq-noaccess-')
  const root = join(parent, 'root')
  await mkdir(root)
  await chmod(parent, isRoot ? 0o700 : 0o000)
  try {
    const user = 'user_noaccess'
    const project = await insertProject(db, user)
    const result = await unprivileged({ databaseUrl: db.url, storageRoot: root }, 'allocateProjectPath', [user, project])
    assert.equal(result.code, 'STORAGE_ERROR', JSON.stringify(result))
    assert.match(result.message, /storage root .* permission denied/i)
  } finally {
    await chmod(parent, 0o700)
  }
})

test('a storage root that cannot be created is a clear STORAGE_ERROR', async () => {
  const parent = await readOnlyDir()
  const root = join(parent, 'new-root')
  const user = 'user_nocreate'
  const project = await insertProject(db, user)
  const result = await unprivileged({ databaseUrl: db.url, storageRoot: root }, 'allocateProjectPath', [user, project])
  assert.equal(result.code, 'STORAGE_ERROR', JSON.stringify(result))
  assert.match(result.message, /cannot create storage root .* permission denied/i)
  assert.deepEqual(await readdir(parent), [])
})

test('a storage root without write permission is a clear STORAGE_ERROR', async () => {
  const root = await readOnlyDir()
  const user = 'user_readonly'
  const project = await insertProject(db, user)
  const result = await unprivileged({ databaseUrl: db.url, storageRoot: root }, 'allocateProjectPath', [user, project])
  assert.equal(result.code, 'STORAGE_ERROR', JSON.stringify(result))
  assert.match(result.message, /cannot create .*user_readonly.* permission denied/i)
  assert.deepEqual(await readdir(root), [])
})

test('200 concurrent allocations of five projects from four clients: one row and one directory each', async () => {
  const user = 'user_crowd'
  const projects = []
  for (let i = 0; i < 5; i++) projects.push(await insertProject(db, user))
  const clients = [client, ...[1, 2, 3].map(() => createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, poolSize: 4 }))]
  try {
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) => clients[i % 4].allocateProjectPath(user, projects[(i * 7) % 5])),
    )
    for (const project of projects) {
      const mine = results.filter((r) => r.projectId === project)
      assert.equal(mine.length, 40)
      assert.equal(new Set(mine.map((r) => r.id)).size, 1, 'one record id per project')
      assert.equal(new Set(mine.map((r) => r.path)).size, 1, 'one path per project')
    }
    const { rows } = await db.query(
      'SELECT project_id, count(*)::int AS n FROM project_storage_paths WHERE user_id = $1 GROUP BY project_id',
      [user],
    )
    assert.equal(rows.length, 5)
    assert.ok(rows.every((row) => row.n === 1))
    assert.deepEqual((await readdir(join(db.storageRoot, user))).sort(), [...projects].sort())
  } finally {
    await Promise.all(clients.slice(1).map((c) => c.close()))
  }
})
