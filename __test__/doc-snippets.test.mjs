// Every ts/tsx/js code block of README.md and examples/nextjs/README.md type-checks against the
// package's typings (scripts/check-doc-snippets.mjs; the same runs in CI as `npm run check:docs`),
// and the README's lead example, the upload route handler, runs.
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

// The README's lead example runs: its route handler, compiled as written, handles real PUT
// requests against a real database and disk (Next.js and Clerk replaced by the few lines of
// theirs it uses: NextResponse.json and auth()).
test("the README's upload route handler runs: stores, counts, refuses with the numbers, refuses bad names", async () => {
  const { readFile, writeFile, mkdir, rm, readdir } = await import('node:fs/promises')
  const { join } = await import('node:path')
  const { pathToFileURL } = await import('node:url')
  const ts = (await import('typescript')).default
  const { createTestDatabase, insertProject, quotaCounters } = await import('./helpers/db.mjs')
  const quota = await import('../index.js')

  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')
  const block = codeBlocks(readme).find((b) => b.lang === 'ts' && b.code.includes('export async function PUT'))
  assert.ok(block, 'the README has the route handler')
  const dir = fileURLToPath(new URL(`../target/doc-run-${process.pid}/`, import.meta.url))
  await mkdir(dir, { recursive: true })
  const db = await createTestDatabase('docrun')
  const saved = { url: process.env.DATABASE_URL, root: process.env.STORAGE_ROOT }
  try {
    await writeFile(join(dir, 'next-server.mjs'), `export class NextResponse extends Response {
      static json(body, init) { return new NextResponse(JSON.stringify(body), { ...init, headers: { 'content-type': 'application/json' } }) }
    }\n`)
    await writeFile(join(dir, 'clerk.mjs'), 'export async function auth() { return { userId: globalThis.signedIn ?? null, orgId: null } }\n')
    const js = ts
      .transpileModule(block.code, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } })
      .outputText.replace("'next/server'", `'${pathToFileURL(join(dir, 'next-server.mjs'))}'`)
      .replace("'@clerk/nextjs/server'", `'${pathToFileURL(join(dir, 'clerk.mjs'))}'`)
      .replace("'storage-quota'", `'${pathToFileURL(fileURLToPath(new URL('../index.js', import.meta.url)))}'`)
    await writeFile(join(dir, 'route.mjs'), js)

    process.env.DATABASE_URL = db.url
    process.env.STORAGE_ROOT = db.storageRoot
    await quota.closeDefaultClient()
    await quota.migrate()
    const { PUT } = await import(pathToFileURL(join(dir, 'route.mjs')))
    const userId = 'user_2NNEqL2nrIRdJ194ndJqAHwEfxC'
    globalThis.signedIn = userId
    const projectId = await insertProject(db, userId)
    await quota.setQuotaLimit(userId, 5000)
    const put = (name, bytes) => {
      const url = `http://localhost/api/projects/${projectId}/files?name=${encodeURIComponent(name)}`
      const request = new Request(url, { method: 'PUT', body: Buffer.alloc(bytes, 7), headers: { 'content-length': String(bytes) } })
      request.nextUrl = new URL(url)
      return PUT(request, { params: Promise.resolve({ projectId }) })
    }

    const ok = await put('report.csv', 3000)
    assert.equal(ok.status, 200)
    assert.deepEqual(await ok.json(), { ok: true, bytes: 3000 })
    const projectDir = join(db.storageRoot, userId, projectId)
    assert.deepEqual(await readdir(projectDir), ['report.csv'])
    assert.deepEqual(await quotaCounters(db, userId), { used: 3000, reserved: 0, ledger: 3000 })

    const refused = await put('big.bin', 2001)
    assert.equal(refused.status, 413)
    const body = await refused.json()
    assert.equal(body.remainingBytes, 2000)
    assert.match(body.message, /Storage quota exceeded/)
    assert.deepEqual(await readdir(projectDir), ['report.csv'], 'nothing written for a refusal')

    assert.equal((await put('../escape.txt', 10)).status, 400)
    await assert.rejects(put('report.csv', 10), { code: 'EEXIST' }) // a 500 in Next.js; the bytes go back
    assert.deepEqual(await readdir(projectDir), ['report.csv'])
    assert.deepEqual(await quotaCounters(db, userId), { used: 3000, reserved: 0, ledger: 3000 })
  } finally {
    delete globalThis.signedIn
    await quota.closeDefaultClient()
    for (const [key, value] of [['DATABASE_URL', saved.url], ['STORAGE_ROOT', saved.root]]) {
      if (value === undefined) delete process.env[key]
      else process.env[key] = value
    }
    await rm(dir, { recursive: true, force: true })
  }
})
