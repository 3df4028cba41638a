// What the package holds in a process that uses it (issue 13, BENCHMARKS.md "Memory"):
// - the JS layer's per-call path is light enough that a thousand calls optimize none of it, so
//   V8's optimizing compiler (~4 MB of node's code) is not paged in for them.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { createClient } from '../index.js'
import { createTestDatabase, insertProject } from './helpers/db.mjs'

test('a thousand calls through the JS layer optimize none of its functions', async () => {
  const db = await createTestDatabase('memory_opt')
  const client = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, logger: false, poolSize: 1 })
  await client.migrate()
  await client.close()
  const users = await Promise.all(Array.from({ length: 16 }, async (_, i) => [`opt_${i}`, await insertProject(db, `opt_${i}`)]))
  // TurboFan only (`--no-maglev`), so the answer does not depend on whether this Node version
  // enables Maglev, whose threshold is a fixed 100 calls of any function.
  const child = spawnSync(process.execPath, ['--trace-opt', '--no-maglev', fileURLToPath(new URL('./helpers/calls-child.mjs', import.meta.url))], {
    env: { ...process.env, DATABASE_URL: db.url, STORAGE_ROOT: db.storageRoot, USERS: JSON.stringify(users) },
    encoding: 'utf8',
  })
  assert.equal(child.status, 0, child.stderr)
  assert.match(child.stdout, /^calls 1280$/m)
  const optimized = [...child.stdout.matchAll(/completed optimizing [^<]*<JSFunction ([^ >]+)/g)].map((m) => m[1])
  assert.deepEqual(optimized, [], 'functions TurboFan optimized during 1,280 calls')
})
