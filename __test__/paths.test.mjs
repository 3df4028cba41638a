import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { lstat, mkdtemp, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createClient } from '../index.js'
import { createTestDatabase, insertProject, rejection } from './helpers/db.mjs'

const db = await createTestDatabase('paths')
const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
await client.migrate()
after(() => client.close())

test('allocates {storageRoot}/{userId}/{projectId}/ and creates it, owner-only', async () => {
  const user = 'user_2NNEqL2nrIRdJ194ndJqAHwEfxC'
  const project = await insertProject(db, user)
  const allocated = await client.allocateProjectPath(user, project)
  assert.equal(allocated.path, `${db.storageRoot}/${user}/${project}/`)
  assert.equal(allocated.key, `${user}/${project}/`)
  assert.equal(allocated.backend, 'local')
  assert.equal(allocated.projectId, project)
  assert.equal(allocated.userId, user)
  assert.ok(allocated.createdAt instanceof Date)
  const info = await stat(allocated.path)
  assert.ok(info.isDirectory())
  assert.equal(info.mode & 0o777, 0o700)
  const { rows } = await db.query('SELECT storage_path_id FROM projects WHERE id = $1', [project])
  assert.equal(rows[0].storage_path_id, allocated.id, 'projects.storage_path_id points at the record')
})

test('calling it again, or from many calls and clients at once, gives one path and one row', async () => {
  const user = 'user_many'
  const project = await insertProject(db, user)
  const others = [1, 2, 3].map(() => createClient({ databaseUrl: db.url, storageRoot: db.storageRoot }))
  try {
    const all = await Promise.all(
      Array.from({ length: 40 }, (_, i) => [client, ...others][i % 4].allocateProjectPath(user, project)),
    )
    assert.equal(new Set(all.map((p) => p.id)).size, 1)
    assert.equal(new Set(all.map((p) => p.path)).size, 1)
    const { rows } = await db.query('SELECT count(*)::int AS n FROM project_storage_paths WHERE project_id = $1', [project])
    assert.equal(rows[0].n, 1)
    assert.deepEqual(await readdir(join(db.storageRoot, user)), [project])
  } finally {
    await Promise.all(others.map((c) => c.close()))
  }
})

test('upper-case project ids are the same project', async () => {
  const user = 'user_case'
  const project = await insertProject(db, user)
  const lower = await client.allocateProjectPath(user, project)
  const upper = await client.allocateProjectPath(user, project.toUpperCase())
  assert.equal(upper.path, lower.path)
})

test('unknown project is NOT_FOUND, another user\'s is FORBIDDEN, and no directory appears', async () => {
  const project = await insertProject(db, 'user_alice')
  assert.equal((await rejection(client.allocateProjectPath('user_bob', randomUUID()))).code, 'NOT_FOUND')
  assert.equal((await rejection(client.allocateProjectPath('user_bob', project))).code, 'FORBIDDEN')
  await assert.rejects(lstat(join(db.storageRoot, 'user_bob')), { code: 'ENOENT' })
  const { rows } = await db.query('SELECT count(*)::int AS n FROM project_storage_paths WHERE project_id = $1', [project])
  assert.equal(rows[0].n, 0)
})

test('ids that could leave the root are refused before anything is touched', async () => {
  const project = await insertProject(db, 'user_safe')
  const before = (await readdir(db.storageRoot)).sort()
  const hostileUsers = ['..', '../etc', 'a/b', 'a\\b', 'a\0b', '%2e%2e', '', ' user', 'user.name', '/abs', 'C:', 'ｕser', 'a'.repeat(129)]
  for (const userId of hostileUsers) {
    const error = await rejection(client.allocateProjectPath(userId, project))
    assert.equal(error.code, 'INVALID_ARGUMENT', `userId ${JSON.stringify(userId)}`)
  }
  for (const projectId of ['..', `${project}/..`, `../${project.slice(3)}`, `{${project}}`, `${project}.`]) {
    const error = await rejection(client.allocateProjectPath('user_safe', projectId))
    assert.equal(error.code, 'INVALID_ARGUMENT', `projectId ${JSON.stringify(projectId)}`)
  }
  // The bare 32-digit form is a well-formed text id, but of no project: it never aliases the uuid.
  assert.equal((await rejection(client.allocateProjectPath('user_safe', project.replaceAll('-', '')))).code, 'NOT_FOUND')
  assert.deepEqual((await readdir(db.storageRoot)).sort(), before, 'the storage root is unchanged')
  const { rows } = await db.query('SELECT count(*)::int AS n FROM project_storage_paths WHERE project_id = $1', [project])
  assert.equal(rows[0].n, 0, 'no record was written')
})

test('a symlink planted at {root}/{userId} is not followed', async () => {
  const user = 'user_planted'
  const project = await insertProject(db, user)
  const elsewhere = await mkdtemp(join(tmpdir(), 'sq-elsewhere-'))
  after(() => rm(elsewhere, { recursive: true, force: true }))
  await symlink(elsewhere, join(db.storageRoot, user))
  const error = await rejection(client.allocateProjectPath(user, project))
  assert.equal(error.code, 'UNSAFE_PATH')
  assert.deepEqual(await readdir(elsewhere), [], 'nothing was created through the link')
})

test('a storage root that is a file gives a clear STORAGE_ERROR', async () => {
  const scratch = await mkdtemp(join(tmpdir(), 'sq-rootfile-'))
  after(() => rm(scratch, { recursive: true, force: true }))
  const file = join(scratch, 'not-a-dir')
  await writeFile(file, 'x')
  const bad = createClient({ databaseUrl: db.url, storageRoot: file })
  try {
    const user = 'user_rootfile'
    const project = await insertProject(db, user)
    const error = await rejection(bad.allocateProjectPath(user, project))
    assert.equal(error.code, 'STORAGE_ERROR')
    assert.match(error.message, /exists but is not a directory/)
  } finally {
    await bad.close()
  }
})

test('a missing storage root is created', async () => {
  const scratch = await mkdtemp(join(tmpdir(), 'sq-newroot-'))
  after(() => rm(scratch, { recursive: true, force: true }))
  const root = join(scratch, 'nested', 'root')
  const fresh = createClient({ databaseUrl: db.url, storageRoot: root })
  try {
    const user = 'user_newroot'
    const project = await insertProject(db, user)
    const allocated = await fresh.allocateProjectPath(user, project)
    assert.ok((await stat(allocated.path)).isDirectory())
  } finally {
    await fresh.close()
  }
})
