// Every ts/tsx/js code block of README.md and examples/nextjs/README.md type-checks against the
// package's typings (scripts/check-doc-snippets.mjs; the same runs in CI as `npm run check:docs`).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'
import { codeBlocks } from '../scripts/check-doc-snippets.mjs'

const script = fileURLToPath(new URL('../scripts/check-doc-snippets.mjs', import.meta.url))

test('code blocks are found, indented ones inside list items too', () => {
  const md = 'text\n\n```ts\nconst a = 1\n```\n\n1. step\n   ```ts\n   const b: number = 2\n   ```\n\n```sh\nls\n```\n'
  assert.deepEqual(
    codeBlocks(md).map((b) => [b.lang, b.code.trim()]),
    [['ts', 'const a = 1'], ['ts', 'const b: number = 2'], ['sh', 'ls']],
  )
})

test('the README code blocks type-check', async () => {
  const result = await promisify(execFile)(process.execPath, [script]).catch((e) => e)
  assert.equal(result.code ?? 0, 0, `${result.stdout}${result.stderr}`)
  assert.match(result.stdout, /\d+ code blocks of README.md and examples\/nextjs\/README.md type-check/)
})
