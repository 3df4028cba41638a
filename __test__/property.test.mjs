// Property tests (fast-check): generated ids and candidate paths, sent straight into the addon
// (no Zod in front) and through the JS layer. For every accepted input the path lies under the
// root; every refused one is INVALID_ARGUMENT (never a crash); Zod and Rust agree.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { isAbsolute, join, relative, resolve, sep } from 'node:path'
import { createRequire } from 'node:module'
import fc from 'fast-check'
import { createClient, ProjectIdSchema, UserIdSchema } from '../index.js'

const require = createRequire(import.meta.url)
const { NativeClient } = require('../binding.js')
const { fromNative } = require('../lib/errors.js')

const root = await mkdtemp(join(tmpdir(), 'sq-prop-'))
const native = new NativeClient({ storageRoot: root })
const s3 = new NativeClient({ storage: { backend: 's3', bucket: 'prop-bucket', prefix: 'pre/fix' } })
const client = createClient({ storageRoot: root })
after(async () => {
  native.close()
  s3.close()
  await client.close()
  await rm(root, { recursive: true, force: true })
})

// Pieces that traversal attempts are made of, mixed with ordinary id characters.
const fragments = [
  '.', '..', '/', '\\', '%', '%2e', '%2f', '%5c', '%25', '%00', '%c0%ae', '\0', '\n', ' ', ':', 'C:', '~',
  '\u2215', '\u2044', '\uff0f', '\u29f8', '\uff0e', '\u2024', '\u0338', '\u200b', '\u202e', '\uff55',
  'a', 'Z', '0', '9', '_', '-', 'user_', 'é',
]
const hostile = fc.array(fc.constantFrom(...fragments), { maxLength: 12 }).map((parts) => parts.join(''))
const userIds = fc.oneof(
  fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/),
  hostile,
  fc.string({ unit: 'binary', maxLength: 140 }),
  fc.string({ unit: 'grapheme', maxLength: 40 }),
)
const projectIds = fc.oneof(
  fc.uuid(),
  fc.bigInt({ min: 0n, max: 2n ** 63n - 1n }).map(String),
  fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/),
  fc.uuid().map((id) => id.toUpperCase()),
  fc.uuid().chain((id) => fc.nat(35).chain((i) => fc.constantFrom(...fragments).map((f) => id.slice(0, i) + f + id.slice(i + 1)))),
  hostile,
  fc.string({ unit: 'binary', maxLength: 40 }),
)

/** How the package spells a project id: uuids lower-case, other ids as given. */
const canonical = (id) => (/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(id) ? id.toLowerCase() : id)

function attempt(call) {
  try {
    return { ok: call() }
  } catch (error) {
    return { error: fromNative(error) }
  }
}

test('projectPathFor: every accepted id pair lies two segments under the root; the rest is INVALID_ARGUMENT', () => {
  fc.assert(
    fc.property(userIds, projectIds, (userId, projectId) => {
      const local = attempt(() => native.projectPathFor(userId, projectId))
      const remote = attempt(() => s3.projectPathFor(userId, projectId))
      const zodAccepts = UserIdSchema.safeParse(userId).success && ProjectIdSchema.safeParse(projectId).success
      assert.equal(Boolean(local.ok), zodAccepts, 'Zod and Rust agree')
      assert.equal(Boolean(remote.ok), zodAccepts)
      if (!local.ok) {
        assert.equal(local.error.code, 'INVALID_ARGUMENT')
        assert.equal(remote.error.code, 'INVALID_ARGUMENT')
        return
      }
      const { path, key } = local.ok
      const dir = path.slice(0, -1)
      assert.equal(resolve(dir), dir, 'the path is already normal: no . or .. segment')
      assert.deepEqual(relative(root, dir).split(sep), [userId, canonical(projectId)])
      assert.equal(key, `${userId}/${canonical(projectId)}/`)
      assert.equal(remote.ok.path, `s3://prop-bucket/pre/fix/${key}`)
    }),
    { numRuns: 3000 },
  )
})

test('validatePath: whatever the candidate, an accepted path lies inside the project directory', async () => {
  const userId = 'user_prop'
  const projectId = '3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b'
  const dir = native.projectPathFor(userId, projectId).path
  const candidates = fc.oneof(
    hostile,
    fc.array(fc.oneof(hostile, fc.constantFrom('..', '.', 'a', 'b c', '')), { maxLength: 8 }).map((s) => s.join('/')),
    fc.array(fc.oneof(hostile, fc.constantFrom('..', 'x')), { maxLength: 6 }).map((s) => dir + s.join('/')),
    fc.string({ unit: 'binary', maxLength: 64 }),
  )
  await fc.assert(
    fc.asyncProperty(candidates, async (candidate) => {
      let check
      try {
        check = await native.validatePath(userId, projectId, candidate)
      } catch (error) {
        assert.equal(candidate, '', `only the empty candidate may reject, got ${fromNative(error).code}`)
        assert.equal(fromNative(error).code, 'INVALID_ARGUMENT')
        return
      }
      if (!check.inside) {
        assert.ok(check.reason && check.path === undefined)
        return
      }
      const inside = relative(dir, resolve(check.path))
      assert.ok(inside.split(sep)[0] !== '..' && !isAbsolute(inside), `${check.path} leaves ${dir}`)
      assert.equal(check.path, dir + check.relativePath)
      assert.ok(!/[\\\0]|%2e|%2f|\u2215|\uff0e/i.test(check.path), `suspicious characters kept in ${check.path}`)
    }),
    { numRuns: 1500 },
  )
  assert.deepEqual(await readdir(root), [], 'checking created nothing')
})

test('the JS layer refuses bad ids with INVALID_ARGUMENT and its issues, and passes good ones through unchanged', async () => {
  await fc.assert(
    fc.asyncProperty(userIds, projectIds, async (userId, projectId) => {
      let result
      try {
        result = client.projectPathFor(userId, projectId)
      } catch (error) {
        assert.equal(error.code, 'INVALID_ARGUMENT')
        assert.ok(error.issues.length > 0, 'refused by Zod, with the issues')
        return
      }
      assert.deepEqual(result, native.projectPathFor(userId, projectId))
    }),
    { numRuns: 1000 },
  )
})
