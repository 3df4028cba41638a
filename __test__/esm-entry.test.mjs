// The ESM entry (index.mjs, what `import 'storage-quota'` loads): the same module instance and
// the same exports as `require`, without loading Zod until an exported schema is used, and
// schemas that behave exactly as the Zod schemas they stand for.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createRequire } from 'node:module'
import { promisify } from 'node:util'
import fc from 'fast-check'

import * as esm from 'storage-quota'

const require = createRequire(import.meta.url)
const cjs = require('../index.js')
const { z } = require('zod')

test('`import` of the package loads Zod only when an exported schema is used', async () => {
  // A fresh process: this test file itself uses the schemas. The package imports itself by name,
  // as an app's `import` does (package.json "exports").
  const script = `
    const { createRequire } = await import('node:module')
    const cache = createRequire(process.cwd() + '/').cache
    const zodLoaded = () => Object.keys(cache).some((k) => k.includes('/zod/'))
    const q = await import('storage-quota')
    const { createClient, StorageQuotaError } = q
    const c = createClient({ databaseUrl: 'postgres://127.0.0.1:1/x', projects: 'standalone' })
    const e = await c.checkQuota('bad id', 1).catch((e) => e)
    console.log(e instanceof StorageQuotaError, e.code, zodLoaded())
    console.log(q.UserIdSchema.safeParse('user_1').success, zodLoaded())
    await c.close()`
  const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], {
    cwd: new URL('..', import.meta.url),
  })
  assert.equal(stdout, 'true INVALID_ARGUMENT false\ntrue true\n')
})

test('`import` and `require` give the same module: every export, the same functions and classes', () => {
  assert.equal(esm.default, cjs)
  assert.deepEqual(Object.keys(esm).filter((k) => k !== 'default').sort(), Object.keys(cjs).sort())
  for (const name of Object.keys(cjs)) {
    if (name.endsWith('Schema')) continue
    assert.equal(esm[name], cjs[name], name)
  }
  assert.equal(esm.getDefaultClient, cjs.getDefaultClient)
})

const schemaNames = Object.keys(cjs).filter((k) => k.endsWith('Schema'))

test('every exported schema is the Zod schema to every question asked of it', () => {
  for (const name of schemaNames) {
    const [mine, theirs] = [esm[name], cjs[name]]
    assert.ok(mine instanceof z.ZodType, name)
    assert.ok(mine instanceof theirs.constructor, name)
    assert.equal(Object.getPrototypeOf(mine), Object.getPrototypeOf(theirs), name)
    assert.deepEqual(Object.keys(mine), Object.keys(theirs), name)
    assert.deepEqual(Reflect.ownKeys(mine), Reflect.ownKeys(theirs), name)
    assert.equal(mine._zod, theirs._zod, name)
    assert.equal('_zod' in mine, true, name)
    assert.deepEqual(z.toJSONSchema(mine, { unrepresentable: 'any' }), z.toJSONSchema(theirs, { unrepresentable: 'any' }), name)
    // Composed into the app's own schemas, and composed from.
    const wrapped = z.object({ value: mine }).optional()
    assert.equal(wrapped.safeParse(undefined).success, true, name)
    assert.equal(mine.optional().safeParse(undefined).success, true, name)
  }
})

test('every exported schema accepts and refuses what the Zod schema does, with the same data and issues', () => {
  const value = fc.oneof(
    fc.string({ maxLength: 140 }),
    fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_-]{0,130}$/),
    fc.uuid(),
    fc.double(),
    fc.integer(),
    fc.constantFrom(0, 1, 1.5, -1, 2 ** 53, NaN, null, undefined, true, [], [1, 2], 'enforce', 'local'),
    fc.dictionary(fc.constantFrom('uploadId', 'ttlMs', 'projects', 'fix', 'databaseUrl', 'poolSize', 'mode'), fc.oneof(fc.string(), fc.integer(), fc.boolean()), { maxKeys: 3 }),
  )
  fc.assert(
    fc.property(fc.constantFrom(...schemaNames), value, (name, v) => {
      const mine = esm[name].safeParse(v)
      const theirs = cjs[name].safeParse(v)
      assert.equal(mine.success, theirs.success, name)
      if (mine.success) assert.deepEqual(mine.data, theirs.data, name)
      else assert.deepEqual(mine.error.issues, theirs.error.issues, name)
    }),
    { numRuns: 5_000 },
  )
})
