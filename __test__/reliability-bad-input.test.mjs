// Bad input everywhere: fast-check throws arbitrary values (wrong types, huge, negative, NaN,
// objects whose getters throw, Proxies, strings with NUL or SQL, very long strings) at every
// argument of every exported function, and at the NativeClient directly.
//
// Contract checked here:
// - async functions (client methods, module-level functions) reject with a StorageQuotaError
//   whose code is INVALID_ARGUMENT, and never throw synchronously;
// - sync functions (createClient, formatBytes) throw that error synchronously;
// - NativeClient (the raw binding): a value of the wrong JS type throws synchronously from
//   napi's conversion (status InvalidArg/StringExpected/NumberExpected/…, which the JS layer
//   maps to INVALID_ARGUMENT; or a plain TypeError when napi's JSON description of the value
//   fails, e.g. a BigInt inside an object), an exception thrown by the caller's own getter or
//   Proxy trap propagates unchanged, and a well-typed but invalid value rejects with
//   INVALID_ARGUMENT from the Rust validators;
// - the process never aborts, and the database and the storage root are unchanged.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { readdir } from 'node:fs/promises'
import fc from 'fast-check'
import * as quota from '../index.js'
import { NativeClient } from '../binding.js'
import { fromNative } from '../lib/errors.js'
import { createTestDatabase, insertProject } from './helpers/db.mjs'
import { KINDS, NO_ARGUMENTS, OPERATIONS, SYNC_OPERATIONS, argumentsWith, databaseSnapshot } from './helpers/operations.mjs'

const RUNS = Number(process.env.FUZZ_RUNS ?? 300)
const { StorageQuotaError } = quota

const db = await createTestDatabase('rel_fuzz')
// The module-level functions use the default client from the environment: point it here, so a
// call that slipped past validation would reach this database and show in the snapshot.
process.env.DATABASE_URL = db.url
process.env.STORAGE_ROOT = db.storageRoot
const client = quota.createClient({ databaseUrl: db.url, storageRoot: db.storageRoot })
await client.migrate()
const ctx = {
  userId: 'user_fuzz',
  projectId: await insertProject(db, 'user_fuzz'),
  otherProjectId: await insertProject(db, 'user_fuzz', 'empty'),
  uploadId: 'fuzz-upload-1',
  clientOptions: { databaseUrl: db.url, storageRoot: db.storageRoot },
}
await client.recordUpload(ctx.userId, ctx.projectId, 5, { uploadId: 'seed' })
await client.allocateProjectPath(ctx.userId, ctx.projectId)
const before = await databaseSnapshot(db)
const rootBefore = await readdir(db.storageRoot, { recursive: true })
after(async () => {
  await client.close()
  await quota.closeDefaultClient()
})

test('the table covers every exported function', () => {
  const methods = Object.getOwnPropertyNames(quota.StorageQuotaClient.prototype).filter((m) => m !== 'constructor')
  const covered = new Set([...OPERATIONS.map((op) => op.name), ...NO_ARGUMENTS])
  // Sync methods (projectPathFor) are fuzzed through their module-level form in SYNC_OPERATIONS.
  const sync = new Set(SYNC_OPERATIONS.map((op) => op.name.split(' ')[0]))
  assert.deepEqual(methods.filter((m) => !covered.has(m) && !sync.has(m)), [], 'add a row to OPERATIONS in helpers/operations.mjs')
  const exported = Object.keys(quota).filter((k) => typeof quota[k] === 'function' && !/^[A-Z]/.test(k))
  const unlisted = exported.filter((k) => !covered.has(k) && !sync.has(k) && !['getDefaultClient', 'closeDefaultClient'].includes(k))
  assert.deepEqual(unlisted, [], 'add each new export to OPERATIONS or SYNC_OPERATIONS')
})

let inputsTried = 0
const unhandled = []
process.on('unhandledRejection', (reason) => unhandled.push(reason))

class HostileError extends Error {}
const hostile = () => {
  throw new HostileError('thrown by a hostile value')
}
const throwingGetters = () => {
  const object = {}
  for (const key of ['uploadId', 'databaseUrl', 'storageRoot', 'poolSize', 'length', 'then', 'toString', 'valueOf']) {
    Object.defineProperty(object, key, { get: hostile, enumerable: true })
  }
  return object
}
const trap = new Proxy({}, {
  get: hostile,
  has: hostile,
  ownKeys: hostile,
  getOwnPropertyDescriptor: hostile,
  getPrototypeOf: hostile,
})
const SQL = [
  "x'); DROP TABLE user_quotas; --",
  "' OR '1'='1",
  '1; DELETE FROM quota_ledger',
  "user_fuzz' --",
  '$1',
  '\\x00',
  "00000000-0000-4000-8000-000000000000' OR 1=1 --",
  '../../etc/passwd',
  '%2e%2e%2f',
]

/**
 * fast-check inspects the values it generates (to clone or print them), which a hostile value
 * would punish; it generates a tag instead and `realize` builds the value for each run.
 */
class Hostile {
  constructor(kind) {
    this.kind = kind
  }
}
function realize(value) {
  if (!(value instanceof Hostile)) return value
  if (value.kind === 'getters') return throwingGetters()
  if (value.kind === 'proxy') return trap
  return { toString: hostile, valueOf: hostile, [Symbol.toPrimitive]: hostile }
}

/** Arbitrary values, weighted towards the nasty ones. */
const nasty = fc.oneof(
  fc.anything({ withBigInt: true, withBoxedValues: true, withDate: true, withMap: true, withSet: true, withNullPrototype: true, withTypedArray: true, withSparseArray: true }),
  fc.double(),
  fc.constantFrom(NaN, Infinity, -Infinity, -0, -1, 0.5, 2 ** 53, 2 ** 64, -(2 ** 63), Number.MIN_VALUE, 1e308),
  fc.bigInt(),
  fc.string({ unit: 'binary', maxLength: 300 }),
  fc.string().map((s) => `${s}\0${s}`),
  fc.constantFrom(...SQL),
  fc.constantFrom('a'.repeat(129), 'u'.repeat(1_000_000), '0'.repeat(36), 'x'.repeat(201), ''),
  fc.constantFrom(new Hostile('getters'), new Hostile('proxy'), new Hostile('primitive')),
  fc.constantFrom(Symbol('s'), () => 1, Promise.resolve(1), new String('user_fuzz'), new Number(1), [1], ['user_fuzz']),
)

async function assertUnchanged() {
  assert.deepEqual(await databaseSnapshot(db), before, 'the database is unchanged')
  assert.deepEqual(await readdir(db.storageRoot, { recursive: true }), rootBefore, 'the storage root is unchanged')
}

const targets = {
  client: (name, args) => client[name](...args),
  'module function': (name, args) => quota[name](...args),
}

for (const [targetName, invoke] of Object.entries(targets)) {
  for (const op of OPERATIONS) {
    op.args.forEach((kind, index) => {
      test(`${targetName} ${op.name}: bad ${kind} (argument ${index + 1}) rejects with INVALID_ARGUMENT`, async () => {
        await fc.assert(
          fc.asyncProperty(nasty.filter((raw) => !KINDS[kind].accepts(realize(raw))), async (raw) => {
            const value = realize(raw)
            inputsTried += 1
            let promise
            try {
              promise = invoke(op.name, argumentsWith(op.args, ctx, index, value))
            } catch (error) {
              assert.fail(`threw synchronously instead of rejecting: ${error}`)
            }
            assert.ok(promise instanceof Promise)
            const error = await promise.then(
              () => assert.fail('resolved'),
              (e) => e,
            )
            assert.ok(error instanceof StorageQuotaError, `not a StorageQuotaError: ${error}`)
            assert.equal(error.code, 'INVALID_ARGUMENT', error.message)
          }),
          { numRuns: RUNS },
        )
        await assertUnchanged()
      })
    })
  }
}

for (const op of SYNC_OPERATIONS) {
  test(`${op.name}: bad input throws INVALID_ARGUMENT synchronously`, async () => {
    await fc.assert(
      fc.property(nasty.filter((raw) => !op.accepts(realize(raw))), (raw) => {
        const value = realize(raw)
        inputsTried += 1
        assert.throws(
          () => op.call(value),
          (error) => error instanceof StorageQuotaError && error.code === 'INVALID_ARGUMENT',
        )
      }),
      { numRuns: RUNS },
    )
  })
}

test('createClient: a bad value in any one option throws INVALID_ARGUMENT', async () => {
  const keys = ['databaseUrl', 'storageRoot', 'defaultQuotaBytes', 'poolSize', 'connectTimeoutMs', 'statementTimeoutMs', 'applicationName', 'unknownOption']
  await fc.assert(
    fc.property(fc.constantFrom(...keys), nasty, (key, raw) => {
      const value = realize(raw)
      const options = { ...ctx.clientOptions, [key]: value }
      fc.pre(!KINDS.clientOptions.accepts(options))
      inputsTried += 1
      assert.throws(
        () => quota.createClient(options),
        (error) => error instanceof StorageQuotaError && error.code === 'INVALID_ARGUMENT',
      )
    }),
    { numRuns: RUNS },
  )
})

function nativeReadsAsNoUploadId(value) {
  try {
    if (value === null || value === undefined) return true
    // napi reads a field of any value as of an object (`false.uploadId` is undefined).
    const id = Object(value).uploadId
    return id === undefined || id === null || KINDS.uploadOptions.accepts({ uploadId: id })
  } catch {
    return false
  }
}

/** Calls the raw binding and classifies what happened. */
async function nativeOutcome(call) {
  let promise
  try {
    promise = call()
  } catch (error) {
    return { sync: true, error }
  }
  try {
    return { value: await promise }
  } catch (error) {
    return { sync: false, error }
  }
}

test('NativeClient methods: every bad argument throws or rejects as INVALID_ARGUMENT (Rust validates too)', async () => {
  const native = new NativeClient(ctx.clientOptions)
  after(() => native.close())
  for (const op of OPERATIONS) {
    for (const [index, kind] of op.native.entries()) {
      await fc.assert(
        fc.asyncProperty(nasty.filter((raw) => !KINDS[kind].accepts(realize(raw))), async (raw) => {
          const value = realize(raw)
          // The binding has no Zod: options it reads as "no uploadId" (null, undefined, any value
          // without that field, extra keys ignored) are valid there, and would charge an upload.
          fc.pre(!(kind === 'uploadOptions' && nativeReadsAsNoUploadId(value)))
          inputsTried += 1
          const args = argumentsWith(op.native, ctx, index, value)
          const outcome = await nativeOutcome(() => native[op.name](...args))
          assert.ok(!('value' in outcome), `${op.name} resolved for a bad ${kind}`)
          if (outcome.error instanceof HostileError) return // the caller's own getter threw
          // napi describes a value of the wrong type with JSON.stringify, which itself throws a
          // TypeError for a BigInt inside an object: still a synchronous refusal, before Rust.
          if (outcome.sync && outcome.error instanceof TypeError && !outcome.error.code) return
          const decoded = fromNative(outcome.error)
          assert.equal(decoded.code, 'INVALID_ARGUMENT', `${op.name}(${kind}): ${decoded.message}`)
          // Rust's refusal: a real Error with its code as a property, not napi's conversion error.
          if (!outcome.sync) assert.equal(outcome.error.code, 'INVALID_ARGUMENT')
        }),
        { numRuns: RUNS },
      )
    }
  }
  await assertUnchanged()
})

test('NativeClient: well-typed but invalid values are refused by Rust, not by napi', async () => {
  const native = new NativeClient(ctx.clientOptions)
  after(() => native.close())
  const invalidStrings = fc.oneof(
    fc.string({ unit: 'binary', maxLength: 300 }),
    fc.constantFrom(...SQL),
    fc.string().map((s) => `${s}\0`),
    fc.constant('u'.repeat(100_000)),
  )
  const invalidNumbers = fc.oneof(fc.double(), fc.constantFrom(NaN, -1, 0.5, 2 ** 53, -0.5, 1e300))
  const cases = [
    [invalidStrings.filter((v) => !KINDS.userId.accepts(v)), (v) => native.checkQuota(v, [1])],
    [invalidNumbers.filter((v) => !KINDS.bytes.accepts(v)), (v) => native.checkQuota(ctx.userId, [v])],
    [invalidStrings.filter((v) => !KINDS.projectId.accepts(v)), (v) => native.allocateProjectPath(ctx.userId, v)],
    [invalidStrings.filter((v) => !KINDS.projectId.accepts(v)), (v) => native.recordUpload(ctx.userId, v, 1)],
    [invalidNumbers.filter((v) => !KINDS.bytes.accepts(v)), (v) => native.recordUpload(ctx.userId, ctx.projectId, v)],
    [invalidStrings.filter((v) => !KINDS.uploadOptions.accepts({ uploadId: v })), (v) => native.recordUpload(ctx.userId, ctx.projectId, 1, { uploadId: v })],
    [invalidNumbers.filter((v) => !KINDS.steps.accepts(v)), (v) => native.rollback(v)],
  ]
  for (const [arbitrary, call] of cases) {
    await fc.assert(
      fc.asyncProperty(arbitrary, async (value) => {
        inputsTried += 1
        const outcome = await nativeOutcome(() => call(value))
        assert.equal(outcome.sync, false, 'a well-typed value reaches Rust and rejects')
        assert.equal(outcome.error.code, 'INVALID_ARGUMENT')
      }),
      { numRuns: RUNS },
    )
  }
  // Lists napi converts without complaint: empty, or longer than the JS schema allows.
  for (const sizes of [[], new Array(10_001).fill(1)]) {
    inputsTried += 1
    const outcome = await nativeOutcome(() => native.checkQuota(ctx.userId, sizes))
    assert.equal(outcome.error.code, 'INVALID_ARGUMENT', `${sizes.length} sizes`)
  }
  // Options: napi would wrap -1 to 4294967295 and truncate 1.5 to 1; Rust refuses both.
  const badOptions = [
    { poolSize: -1 }, { poolSize: 0 }, { poolSize: 1.5 }, { poolSize: NaN }, { poolSize: 1e12 },
    { connectTimeoutMs: -1 }, { connectTimeoutMs: 0 }, { connectTimeoutMs: 2 ** 32 }, { statementTimeoutMs: 1.5 },
    { statementTimeoutMs: -1 }, { defaultQuotaBytes: -1 }, { defaultQuotaBytes: 2 ** 53 }, { storageRoot: '' },
    { storageRoot: 'a\0b' }, { applicationName: 'x'.repeat(64) }, { applicationName: 'tab\there' },
  ]
  for (const options of badOptions) {
    inputsTried += 1
    const error = assert.throws(() => new NativeClient({ ...ctx.clientOptions, ...options }), (e) => {
      assert.equal(e.code, 'INVALID_ARGUMENT', `${JSON.stringify(options)}: ${e.message}`)
      return true
    })
    void error
  }
  await assertUnchanged()
})

test('NativeClient constructor with arbitrary options never aborts the process', async () => {
  await fc.assert(
    fc.property(nasty, (raw) => {
      const value = realize(raw)
      inputsTried += 1
      let made
      try {
        made = new NativeClient(value)
      } catch (error) {
        if (error instanceof HostileError) return
        if (error instanceof TypeError && !error.code) return // napi's description of the value threw
        assert.equal(fromNative(error).code, 'INVALID_ARGUMENT', String(error.message))
        return
      }
      made.close()
    }),
    { numRuns: RUNS },
  )
})

test('no unhandled rejection, and the totals', () => {
  assert.deepEqual(unhandled, [])
  console.log(`# bad inputs tried: ${inputsTried}`)
})
