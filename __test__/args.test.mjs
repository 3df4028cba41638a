// lib/args.js (what every call validates with, without loading Zod) and lib/schemas.js (the
// exported Zod schemas) accept and refuse exactly the same values, and give the same data.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import { readFileSync } from 'node:fs'
import fc from 'fast-check'

const require = createRequire(import.meta.url)
const args = require('../lib/args.js')
const zod = require('../lib/schemas.js')

const scalar = fc.oneof(
  fc.string({ maxLength: 140 }),
  fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_-]{0,130}$/),
  fc.uuid(),
  fc.constantFrom('', 'standalone', 'local', 's3', 'a.txt', 'enforce', 'shadow', 'off', 'info', 'warn', 'a.b', 'x;y', 'app.t', '\0', 'has space'),
  fc.double(),
  fc.integer(),
  fc.constantFrom(0, -0, 1, 1.5, -1, 999, 1000, 1001, 2 ** 31, 2 ** 53 - 1, 2 ** 53, 2 ** 60, NaN, Infinity, -Infinity),
  fc.boolean(),
  fc.constantFrom(null, undefined),
  fc.bigInt(),
)
const keys = [
  'uploadId', 'replacesBytes', 'ttlMs', 'reservationId', 'userId', 'deletionId', 'sizeBytes', 'deleteFiles', 'changedBy',
  'reason', 'projects', 'fix', 'disk', 'databaseUrl', 'storageRoot', 'defaultQuotaBytes', 'poolSize', 'connectTimeoutMs',
  'statementTimeoutMs', 'applicationName', 'mode', 'rolloutPercent', 'reservationTtlMs', 'logger', 'logLevel', 'slowCallMs',
  'storage', 'backend', 'bucket', 'prefix', 'table', 'id', 'owner', 'historyRetentionDays', 'discardUsage', 'batchSize',
  'onProgress', 'signal', 'presign', 'fileName', 'to', 'region', 'other',
]
const value = fc.letrec((tie) => ({
  any: fc.oneof({ depthSize: 'small' }, scalar, tie('object'), fc.array(scalar, { maxLength: 4 }), fc.constantFrom(() => {}, { info() {} })),
  object: fc.dictionary(fc.constantFrom(...keys), tie('any'), { maxKeys: 4 }),
})).any

const names = Object.keys(args).filter((name) => name.endsWith('Schema'))

test('every validator of lib/args.js has its Zod schema, with the same option keys', () => {
  for (const name of names) {
    assert.ok(zod[name], name)
    if (args[name].shape) assert.deepEqual(Object.keys(args[name].shape).sort(), Object.keys(zod[name].shape).sort(), name)
  }
  // Every argument schema the client validates with is here (a new one must be added to both).
  const used = new Set(readFileSync(new URL('../lib/client.js', import.meta.url), 'utf8').match(/S\.\w+Schema/g).map((s) => s.slice(2)))
  for (const name of used) assert.ok(args[name], `lib/args.js lacks ${name}`)
})

test('lib/args.js and the Zod schemas agree on every value', () => {
  fc.assert(
    fc.property(fc.constantFrom(...names), value, (name, v) => {
      const mine = args[name].safeParse(v)
      const theirs = zod[name].safeParse(v)
      assert.equal(mine.success, theirs.success, `${name}(${fc.stringify(v)}): ${JSON.stringify(mine.error ?? theirs.error?.issues)}`)
      if (!mine.success) return
      if (name === 'ClientOptionsSchema' && v?.logger !== undefined) {
        // Zod copies a logger object's own properties (a pino logger would lose its prototype's
        // methods); the package keeps the app's object as it is.
        assert.equal(mine.data.logger, v.logger)
        const { logger: _a, ...restMine } = mine.data
        const { logger: _b, ...restTheirs } = theirs.data
        assert.deepEqual(restMine, restTheirs)
        return
      }
      assert.deepEqual(mine.data, theirs.data)
    }),
    { numRuns: 20_000 },
  )
})

test('the package validates calls without loading Zod', async () => {
  const { execFile } = await import('node:child_process')
  const { promisify } = await import('node:util')
  const script = `const q = require(${JSON.stringify(require.resolve('../index.js'))});
    const c = q.createClient({ databaseUrl: 'postgres://127.0.0.1:1/x', projects: 'standalone' });
    c.checkQuota('bad id', 1).catch((e) => {
      console.log(e.code, Object.keys(require.cache).some((k) => k.includes('/zod/')));
      void q.ProjectIdSchema;
      console.log(Object.keys(require.cache).some((k) => k.includes('/zod/')));
      c.close();
    })`
  const { stdout } = await promisify(execFile)(process.execPath, ['-e', script])
  assert.equal(stdout, 'INVALID_ARGUMENT false\ntrue\n')
})
