import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'

const run = promisify(execFile)
const root = fileURLToPath(new URL('..', import.meta.url))

test('the typings compile against a server-action style usage file', async () => {
  const tsc = fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url))
  const result = await run(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: root }).catch((e) => e)
  assert.equal(result.code ?? 0, 0, `${result.stdout ?? ''}${result.stderr ?? ''}`)
})

test('every export of the package is defined (none re-exports a name lib/ no longer has)', async () => {
  const { createRequire } = await import('node:module')
  const pkg = createRequire(import.meta.url)('../index.js')
  const missing = Object.entries(pkg).filter(([, value]) => value === undefined).map(([name]) => name)
  assert.deepEqual(missing, [])
})
