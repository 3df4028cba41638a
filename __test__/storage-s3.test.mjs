// The object-store backend without a server: records with s3:// paths, allocation that writes
// nothing and sends nothing, and the move of records by hand as README "Moving to object
// storage by hand" says. The requests themselves: storage-s3-objects.test.mjs, against moto.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { access, mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createClient, ProjectLocationSchema, ProjectStoragePathSchema } from '../index.js'
import { createTestDatabase, insertProject, rejection } from './helpers/db.mjs'

const db = await createTestDatabase('s3')
const local = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
await local.migrate()
// A root that does not exist: the s3 backend must never create it, nor anything else.
const scratch = await mkdtemp(join(tmpdir(), 'sq-s3-'))
const missingRoot = join(scratch, 'never-created')
const s3 = createClient({
  databaseUrl: db.url,
  storageRoot: missingRoot,
  storage: { backend: 's3', bucket: 'acme-uploads', prefix: '/tenants/prod/' },
})
after(async () => {
  await local.close()
  await s3.close()
  await rm(scratch, { recursive: true, force: true })
})

async function exists(path) {
  return access(path).then(
    () => true,
    () => false,
  )
}

test('allocation records s3://bucket/prefix/{userId}/{projectId}/ and touches no disk', async () => {
  const user = 'user_2NNEqL2nrIRdJ194ndJqAHwEfxC'
  const project = await insertProject(db, user)
  const cwdBefore = (await readdir(process.cwd())).sort()
  const allocated = await s3.allocateProjectPath(user, project)
  assert.equal(allocated.backend, 's3')
  assert.equal(allocated.key, `${user}/${project}/`)
  assert.equal(allocated.path, `s3://acme-uploads/tenants/prod/${user}/${project}/`)
  ProjectStoragePathSchema.parse(allocated)
  assert.equal(await exists(missingRoot), false, 'the storage root was not created')
  assert.deepEqual(await readdir(scratch), [])
  assert.deepEqual((await readdir(process.cwd())).sort(), cwdBefore, 'nothing appeared in the working directory')
  const { rows } = await db.query('SELECT backend, key, path FROM project_storage_paths WHERE project_id = $1', [project])
  assert.deepEqual(rows, [{ backend: 's3', key: allocated.key, path: allocated.path }])
  assert.deepEqual(s3.projectPathFor(user, project), { backend: 's3', key: allocated.key, path: allocated.path })
})

test('many concurrent s3 allocations of one project give one row', async () => {
  const user = 'user_s3many'
  const project = await insertProject(db, user)
  const other = createClient({ databaseUrl: db.url, storage: { backend: 's3', bucket: 'acme-uploads', prefix: 'tenants/prod' } })
  try {
    const all = await Promise.all(Array.from({ length: 60 }, (_, i) => (i % 2 ? s3 : other).allocateProjectPath(user, project)))
    assert.equal(new Set(all.map((p) => p.id)).size, 1)
    const { rows } = await db.query('SELECT count(*)::int AS n FROM project_storage_paths WHERE project_id = $1', [project])
    assert.equal(rows[0].n, 1)
  } finally {
    await other.close()
  }
  assert.equal(await exists(missingRoot), false)
})

test('without a prefix the key sits at the top of the bucket', () => {
  const bare = createClient({ databaseUrl: db.url, storage: { backend: 's3', bucket: 'acme-uploads' } })
  const project = '3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b'
  const location = bare.projectPathFor('user_1', project)
  ProjectLocationSchema.parse(location)
  assert.equal(location.path, `s3://acme-uploads/user_1/${project}/`)
  void bare.close()
})

test('bad storage options are INVALID_ARGUMENT when the client is created', () => {
  const bad = [
    { backend: 's3' },
    { backend: 's3', bucket: 'Has_Upper' },
    { backend: 's3', bucket: '192.168.1.1' },
    { backend: 's3', bucket: 'ok-bucket', prefix: 'a/../b' },
    { backend: 's3', bucket: 'ok-bucket', prefix: 'a//b' },
    { backend: 's3', bucket: 'ok-bucket', prefix: 'caf\u00e9' },
    { backend: 'gcs', bucket: 'ok-bucket' },
    { backend: 'local', bucket: 'ok-bucket' },
  ]
  for (const storage of bad) {
    assert.throws(() => createClient({ databaseUrl: db.url, storage }), { code: 'INVALID_ARGUMENT' }, JSON.stringify(storage))
  }
})

test('a record of the other backend is a STORAGE_ERROR, and moving it as documented works', async () => {
  const user = 'user_mover'
  const project = await insertProject(db, user)
  const before = await local.allocateProjectPath(user, project)
  const error = await rejection(s3.allocateProjectPath(user, project))
  assert.equal(error.code, 'STORAGE_ERROR')
  assert.match(error.message, /Moving to object storage/)

  // README "Moving to object storage", step 3, as an app would run it.
  const { rowCount } = await db.query(
    `UPDATE project_storage_paths
        SET backend = 's3', path = $1 || key
      WHERE backend = 'local' AND path = $2 || key`,
    ['s3://acme-uploads/tenants/prod/', `${db.storageRoot}/`],
  )
  assert.ok(rowCount >= 1)
  const after = await s3.allocateProjectPath(user, project)
  assert.equal(after.id, before.id, 'the same record, moved')
  assert.equal(after.key, before.key, 'the key did not change')
  assert.equal(after.path, `s3://acme-uploads/tenants/prod/${user}/${project}/`)
  assert.equal((await rejection(local.allocateProjectPath(user, project))).code, 'STORAGE_ERROR')
})

test('validatePath on s3 checks keys and s3:// URLs lexically', async () => {
  const user = 'user_keys'
  const project = '3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b'
  const base = `s3://acme-uploads/tenants/prod/${user}/${project}/`
  assert.deepEqual(await s3.validatePath(user, project, 'renders/frame 01.png'), {
    inside: true,
    path: `${base}renders/frame 01.png`,
    relativePath: 'renders/frame 01.png',
  })
  assert.equal((await s3.validatePath(user, project, `${base}a/../b`)).relativePath, 'b')
  assert.equal((await s3.validatePath(user, project, `s3://acme-uploads/tenants/prod/${user}/other/x`)).inside, false)
  assert.equal((await s3.validatePath(user, project, 's3://other-bucket/tenants/prod/x')).inside, false)
  assert.equal(await exists(missingRoot), false)
})
