// The traversal corpus (fixtures/traversal.json, shared with src/ids.rs) against every call that
// turns ids into a path, through the JS layer and straight into the addon (skipping Zod, so the
// Rust validators are tested on their own). Each must be INVALID_ARGUMENT with nothing written.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { readFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { createRequire } from 'node:module'
import { createClient } from '../index.js'
import { createTestDatabase, insertProject, rejection } from './helpers/db.mjs'

const require = createRequire(import.meta.url)
const { NativeClient } = require('../binding.js')
const { fromNative } = require('../lib/errors.js')

const corpus = JSON.parse(await readFile(new URL('./fixtures/traversal.json', import.meta.url), 'utf8'))
const db = await createTestDatabase('traversal')
const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
const native = new NativeClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
const s3 = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, storage: { backend: 's3', bucket: 'b-1', prefix: 'p' } })
await client.migrate()
after(async () => {
  await client.close()
  await s3.close()
  native.close()
})

/** Every file and directory under `dir`, relative, sorted: what "nothing written" compares. */
async function tree(dir) {
  const entries = await readdir(dir, { recursive: true })
  return entries.sort()
}

async function counts() {
  const { rows } = await db.query(
    'SELECT (SELECT count(*) FROM project_storage_paths)::int AS paths, (SELECT count(*) FROM user_quotas)::int AS quotas',
  )
  return rows[0]
}

/** The code a call fails with, whether it throws synchronously or rejects. */
async function codeOf(call, viaNative) {
  try {
    await call()
  } catch (error) {
    return (viaNative ? fromNative(error) : error).code
  }
  return 'RESOLVED'
}

test(`the corpus has at least 50 distinct attempts (${corpus.ids.length} ids, ${corpus.projectIds.length} UUID-shaped)`, () => {
  assert.ok(new Set(corpus.ids).size === corpus.ids.length && corpus.ids.length >= 50)
})

test('every attempt as a userId is INVALID_ARGUMENT on every call, and nothing is written', async () => {
  const project = await insertProject(db, 'user_owner')
  const before = { tree: await tree(db.storageRoot), counts: await counts() }
  for (const bad of corpus.ids) {
    const calls = {
      'client.allocateProjectPath': [() => client.allocateProjectPath(bad, project), false],
      'client.projectPathFor': [() => client.projectPathFor(bad, project), false],
      'client.validatePath': [() => client.validatePath(bad, project, 'a.txt'), false],
      'client.diskUsage': [() => client.diskUsage(bad, project), false],
      's3.allocateProjectPath': [() => s3.allocateProjectPath(bad, project), false],
      'native.allocateProjectPath': [() => native.allocateProjectPath(bad, project), true],
      'native.projectPathFor': [() => native.projectPathFor(bad, project), true],
      'native.validatePath': [() => native.validatePath(bad, project, 'a.txt'), true],
      'native.diskUsage': [() => native.diskUsage(bad, project), true],
      'native.recordUpload': [() => native.recordUpload(bad, project, 1), true],
      'native.checkQuota': [() => native.checkQuota(bad, [1]), true],
    }
    for (const [name, [call, viaNative]] of Object.entries(calls)) {
      assert.equal(await codeOf(call, viaNative), 'INVALID_ARGUMENT', `${name}(${JSON.stringify(bad)})`)
    }
  }
  assert.deepEqual(await tree(db.storageRoot), before.tree, 'the storage root is unchanged')
  assert.deepEqual(await counts(), before.counts, 'no row was written')
})

test('every attempt as a projectId is INVALID_ARGUMENT on every call, and nothing is written', async () => {
  const user = 'user_owner2'
  await insertProject(db, user)
  const before = { tree: await tree(db.storageRoot), counts: await counts() }
  for (const bad of [...corpus.ids, ...corpus.projectIds]) {
    const calls = {
      'client.allocateProjectPath': [() => client.allocateProjectPath(user, bad), false],
      'client.projectPathFor': [() => client.projectPathFor(user, bad), false],
      'native.allocateProjectPath': [() => native.allocateProjectPath(user, bad), true],
      'native.projectPathFor': [() => native.projectPathFor(user, bad), true],
      'native.validatePath': [() => native.validatePath(user, bad, 'a.txt'), true],
      'native.diskUsage': [() => native.diskUsage(user, bad), true],
      'native.recordUpload': [() => native.recordUpload(user, bad, 1), true],
    }
    for (const [name, [call, viaNative]] of Object.entries(calls)) {
      assert.equal(await codeOf(call, viaNative), 'INVALID_ARGUMENT', `${name}(${JSON.stringify(bad)})`)
    }
  }
  assert.deepEqual(await tree(db.storageRoot), before.tree)
  assert.deepEqual(await counts(), before.counts)
})

test('every candidate attempt is answered inside: false by validatePath, on both backends', async () => {
  const user = 'user_candidates'
  const project = await insertProject(db, user)
  const allocated = await client.allocateProjectPath(user, project)
  const other = await client.allocateProjectPath(user, await insertProject(db, user))
  const before = await tree(db.storageRoot)
  const absolute = [
    other.path,
    `${other.path}x`,
    `${allocated.path}../${other.projectId}/x`,
    `${allocated.path.slice(0, -1)}x/y`,
    `${db.storageRoot}/${user}`,
    '/etc/passwd',
  ]
  for (const candidate of [...corpus.candidates, ...absolute]) {
    for (const [name, c] of [['local', client], ['s3', s3]]) {
      const check = await c.validatePath(user, project, candidate)
      assert.equal(check.inside, false, `${name}: validatePath(${JSON.stringify(candidate)}) was accepted as ${check.path}`)
      assert.equal(check.path, undefined)
      assert.ok(check.reason.length > 0)
    }
  }
  assert.deepEqual(await tree(db.storageRoot), before, 'checking wrote nothing')
})
