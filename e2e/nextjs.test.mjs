// The example Next.js app in a real browser: create a project, upload, watch the quota bar,
// be refused, copy, delete. Every step is checked where it lands too: on disk and in PostgreSQL.
// Run with `npm run test:e2e` (packs the tarballs first). E2E_REUSE_BUILD=1 skips `npm ci` and
// `next build` when the example is already installed and built.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { request } from 'node:http'
import { join } from 'node:path'
import { after, before, test } from 'node:test'
import { createTestDatabase } from '../__test__/helpers/db.mjs'
import { ACCESS_KEY_ID, checkPresignedUrl, motoInstalled, REGION, SECRET_ACCESS_KEY, startS3 } from '../__test__/helpers/s3.mjs'
import { APP, OUTPUT, buildApp, installApp, launchBrowser, listDir, startApp } from './helpers.mjs'

const KB = 1024
const QUOTA = 1024 * KB // 1 MB per user, so a few small files fill it

let app
let browser
let page

// Registered first so it runs first: the app stops before its database is dropped.
after(async () => {
  // What the page and the server looked like at the end, for when a step failed.
  await page?.screenshot({ path: join(OUTPUT, 'last.png'), fullPage: true }).catch(() => {})
  if (app) writeFileSync(join(OUTPUT, 'next.log'), app.log())
  await browser?.close()
  await app?.stop()
})

// At the top level: the helper drops the database when the file ends.
const db = await createTestDatabase('e2e')

before(async () => {
  rmSync(OUTPUT, { recursive: true, force: true })
  mkdirSync(OUTPUT, { recursive: true })
  if (!process.env.E2E_REUSE_BUILD) {
    console.log(`npm ci in examples/nextjs: ${installApp().toFixed(1)} s`)
    console.log(`next build: ${buildApp().toFixed(1)} s`)
  }
  app = await startApp({
    DATABASE_URL: db.url,
    STORAGE_ROOT: db.storageRoot,
    STORAGE_QUOTA_DEFAULT_BYTES: String(QUOTA),
  })
  browser = await launchBrowser()
  page = await browser.context.newPage()
})

async function shot(name) {
  await page.screenshot({ path: join(OUTPUT, `${name}.png`), fullPage: true })
}

/** Waits until the quota bar reads `label`, e.g. "420 KB of 1 MB". */
async function quotaReads(label) {
  await page.getByTestId('quota-label').filter({ hasText: new RegExp(`^${label}$`) }).waitFor({ timeout: 15_000 })
}

async function usedBytes(userId) {
  const { rows } = await db.query('SELECT used_bytes, reserved_bytes FROM user_quotas WHERE user_id = $1', [userId])
  return rows.length ? Number(rows[0].used_bytes) + Number(rows[0].reserved_bytes) : 0
}

function project(name) {
  return page.getByTestId('project').filter({ has: page.getByRole('heading', { name, exact: true }) })
}

async function upload(card, name, bytes) {
  await card.getByLabel('File to upload').setInputFiles({ name, mimeType: 'application/octet-stream', buffer: Buffer.alloc(bytes, 7) })
  await card.getByRole('button', { name: 'Upload', exact: true }).click()
  return card.getByTestId('upload-form').getByRole('status')
}

test('the package loads its binary from the platform package it was installed with', () => {
  const installed = join(APP, 'node_modules', 'storage-quota')
  assert.deepEqual(readdirSync(installed).filter((file) => file.endsWith('.node')), [])
  const loaded = execFileSync(
    process.execPath,
    ['-e', "require('storage-quota'); console.log(Object.keys(require.cache).filter((f) => f.endsWith('.node')).join('\\n'))"],
    { cwd: APP, encoding: 'utf8' },
  ).trim()
  assert.equal(loaded, join(APP, 'node_modules', 'storage-quota-linux-x64-gnu', 'storage-quota.linux-x64-gnu.node'))
})

test('create, upload, refuse, copy, delete: the bar, the disk and the database agree', async (t) => {
  await page.goto(app.url)
  await page.getByLabel('Your name').fill('Ada')
  await page.getByRole('button', { name: 'Sign in' }).click()
  await quotaReads('0 B of 1 MB')
  const userId = (await page.getByTestId('user-id').textContent()).trim()
  assert.match(userId, /^user_[0-9a-f]{27}$/)
  await shot('1-signed-in')

  let thesisId
  await t.test('create project: the app inserts it, storage-quota gives it a directory', async () => {
    await page.getByLabel('Project name').fill('Thesis')
    await page.getByRole('button', { name: 'Create project' }).click()
    await project('Thesis').waitFor()
    thesisId = await project('Thesis').getAttribute('data-project-id')
    const { rows } = await db.query('SELECT path FROM project_storage_paths WHERE project_id = $1 AND user_id = $2', [thesisId, userId])
    assert.equal(rows.length, 1)
    assert.equal(rows[0].path, join(db.storageRoot, userId, thesisId) + '/')
    assert.ok(statSync(rows[0].path).isDirectory())
    assert.equal(await project('Thesis').getByTestId('project-size').textContent(), '0 B')
  })

  const thesisDir = () => join(db.storageRoot, userId, thesisId)

  await t.test('upload: the file is on disk, charged, and the bar moves', async () => {
    const status = await upload(project('Thesis'), 'data.bin', 420 * KB)
    await status.filter({ hasText: 'Uploaded data.bin.' }).waitFor()
    await quotaReads('420 KB of 1 MB')
    assert.equal(await page.getByTestId('quota-percent').textContent(), '41.0%')
    assert.equal(await page.getByTestId('quota').getAttribute('data-state'), 'normal')
    assert.equal(await project('Thesis').getByTestId('project-size').textContent(), '420 KB')
    assert.deepEqual(listDir(thesisDir()), ['data.bin'])
    assert.equal(statSync(join(thesisDir(), 'data.bin')).size, 420 * KB)
    assert.equal(await usedBytes(userId), 420 * KB)
    await shot('2-uploaded')
  })

  await t.test('copy: the copy is charged and the bar turns amber (nearing) past 75 %', async () => {
    await project('Thesis').getByRole('button', { name: 'Copy project' }).click()
    await project('Thesis (copy)').waitFor()
    await quotaReads('840 KB of 1 MB')
    assert.equal(await page.getByTestId('quota').getAttribute('data-state'), 'nearing')
    assert.equal(await project('Thesis (copy)').getByTestId('project-size').textContent(), '420 KB')
    const copyId = await project('Thesis (copy)').getAttribute('data-project-id')
    assert.equal(statSync(join(db.storageRoot, userId, copyId, 'data.bin')).size, 420 * KB)
    assert.equal(await usedBytes(userId), 840 * KB)
    await shot('3-copied')
  })

  await t.test('an upload that does not fit is refused with the message, and nothing is stored', async () => {
    const { rows: before } = await db.query('SELECT count(*)::int AS n FROM quota_ledger WHERE user_id = $1', [userId])
    const status = await upload(project('Thesis'), 'too-big.bin', 300 * KB)
    await status.filter({ hasText: 'Not enough storage' }).waitFor()
    assert.equal(
      await status.textContent(),
      'Not enough storage: this file is 300 KB but only 184 KB of your 1 MB is free.',
    )
    await shot('4-upload-refused')
    assert.deepEqual(listDir(thesisDir()), ['data.bin'], 'no file and no partial upload left behind')
    assert.equal(await usedBytes(userId), 840 * KB)
    const { rows: now } = await db.query('SELECT count(*)::int AS n FROM quota_ledger WHERE user_id = $1', [userId])
    assert.equal(now[0].n, before[0].n)
    await page.reload()
    await quotaReads('840 KB of 1 MB')
  })

  await t.test('a copy that does not fit is refused as a whole', async () => {
    const { rows: before } = await db.query('SELECT count(*)::int AS n FROM projects WHERE user_id = $1', [userId])
    const copyForm = project('Thesis').getByTestId('copy-project')
    await copyForm.getByRole('button', { name: 'Copy project' }).click()
    await copyForm.getByRole('status').filter({ hasText: 'Not enough storage to copy' }).waitFor()
    await shot('5-copy-refused')
    const { rows: now } = await db.query('SELECT count(*)::int AS n FROM projects WHERE user_id = $1', [userId])
    assert.equal(now[0].n, before[0].n)
    assert.equal(listDir(join(db.storageRoot, userId)).length, 2)
    assert.equal(await usedBytes(userId), 840 * KB)
  })

  /** A chunked PUT (no Content-Length to hold the body to its size) declaring `declared` bytes. */
  function rawUpload(name, declared, chunks) {
    return new Promise((resolve, reject) => {
      const req = request(
        `${app.url}/api/projects/${thesisId}/files?name=${name}`,
        { method: 'PUT', headers: { cookie: `example_user_id=${userId}`, 'x-upload-bytes': String(declared) } },
        (res) => {
          let body = ''
          res.on('data', (chunk) => (body += chunk))
          res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(body) }))
        },
      )
      req.on('error', reject)
      for (const chunk of chunks) req.write(chunk)
      req.end()
    })
  }

  await t.test('a client that sends more than it declared is cut off, and nothing is stored', async () => {
    const answer = await rawUpload('liar.bin', 10 * KB, Array.from({ length: 10 }, () => Buffer.alloc(5 * KB, 1)))
    assert.equal(answer.status, 400)
    assert.equal(answer.body.ok, false)
    assert.match(answer.body.message, /more than the 10240 bytes it declared/)
    assert.deepEqual(listDir(thesisDir()), ['data.bin'], 'no file and no partial upload left behind')
    assert.equal(await usedBytes(userId), 840 * KB)
  })

  await t.test('a body shorter than declared is not stored either', async () => {
    const answer = await rawUpload('short.bin', 10 * KB, [Buffer.alloc(4 * KB, 1)])
    assert.equal(answer.status, 400)
    assert.match(answer.body.message, /ended after 4096 of the 10240 bytes/)
    assert.deepEqual(listDir(thesisDir()), ['data.bin'])
    assert.equal(await usedBytes(userId), 840 * KB)
  })

  await t.test('delete frees: the file is gone and the bar goes back', async () => {
    const file = project('Thesis (copy)').getByTestId('file').filter({ hasText: 'data.bin' })
    await file.getByRole('button', { name: 'Delete' }).click()
    await quotaReads('420 KB of 1 MB')
    assert.equal(await project('Thesis (copy)').getByTestId('project-size').textContent(), '0 B')
    const copyId = await project('Thesis (copy)').getAttribute('data-project-id')
    assert.deepEqual(listDir(join(db.storageRoot, userId, copyId)), [])
    assert.equal(await usedBytes(userId), 420 * KB)
    assert.equal(existsSync(join(thesisDir(), 'data.bin')), true, 'the original is untouched')
    await shot('6-deleted')
  })

  await t.test('after the delete, the upload that was refused fits', async () => {
    const status = await upload(project('Thesis'), 'too-big.bin', 300 * KB)
    await status.filter({ hasText: 'Uploaded too-big.bin.' }).waitFor()
    await quotaReads('720 KB of 1 MB')
    assert.deepEqual(listDir(thesisDir()), ['data.bin', 'too-big.bin'])
    assert.equal(await usedBytes(userId), 720 * KB)
    await shot('7-fits-after-delete')
  })
})

test('the same app on S3: the browser uploads straight to the bucket, the server only holds and charges', {
  skip: !motoInstalled && !process.env.CI ? 'moto is not installed (pip install "moto[server]")' : false,
}, async (t) => {
  const bucket = await startS3()
  const s3app = await startApp({
    DATABASE_URL: db.url,
    STORAGE_ROOT: db.storageRoot,
    STORAGE_QUOTA_DEFAULT_BYTES: String(QUOTA),
    STORAGE_BACKEND: 's3',
    STORAGE_BUCKET: bucket.bucket,
    STORAGE_PREFIX: 'projects',
    AWS_ENDPOINT_URL: bucket.endpoint,
    AWS_REGION: REGION,
    AWS_ACCESS_KEY_ID: ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY: SECRET_ACCESS_KEY,
  })
  t.after(async () => {
    writeFileSync(join(OUTPUT, 'next-s3.log'), s3app.log())
    await s3app.stop()
  })
  // Every PUT the browser sends, and where to.
  const puts = []
  const onRequest = (request) => {
    if (request.method() === 'PUT') puts.push(request.url())
  }
  page.on('request', onRequest)
  t.after(() => page.off('request', onRequest))

  // Cookies ignore ports: Ada's session from the app above would carry over.
  await page.context().clearCookies()
  await page.goto(s3app.url)
  await page.getByLabel('Your name').fill('Grace')
  await page.getByRole('button', { name: 'Sign in' }).click()
  await quotaReads('0 B of 1 MB')
  const userId = (await page.getByTestId('user-id').textContent()).trim()
  const keyOf = (projectId, name = '') => `projects/${userId}/${projectId}/${name}`

  await page.getByLabel('Project name').fill('Atlas')
  await page.getByRole('button', { name: 'Create project' }).click()
  await project('Atlas').waitFor()
  const atlasId = await project('Atlas').getAttribute('data-project-id')
  const { rows } = await db.query('SELECT backend, path FROM project_storage_paths WHERE project_id = $1', [atlasId])
  assert.deepEqual(rows, [{ backend: 's3', path: `s3://${bucket.bucket}/${keyOf(atlasId)}` }])
  assert.equal(existsSync(join(db.storageRoot, userId)), false, 'nothing on the local disk')
  assert.equal(await project('Atlas').getByTestId('upload-form').getAttribute('data-direct'), 'true')

  await t.test('upload: the bytes go from the browser to the bucket, presigned, and are charged', async () => {
    const status = await upload(project('Atlas'), 'map.bin', 420 * KB)
    await status.filter({ hasText: 'Uploaded map.bin.' }).waitFor()
    await quotaReads('420 KB of 1 MB')
    assert.deepEqual(await bucket.objects(keyOf(atlasId)), { [keyOf(atlasId, 'map.bin')]: 420 * KB })
    assert.deepEqual(await bucket.get(keyOf(atlasId, 'map.bin')), Buffer.alloc(420 * KB, 7))
    assert.equal(puts.length, 1)
    assert.ok(puts[0].startsWith(`${bucket.endpoint}/${bucket.bucket}/${keyOf(atlasId, 'map.bin')}?`), puts[0])
    checkPresignedUrl(puts[0])
    assert.equal(await project('Atlas').getByTestId('project-size').textContent(), '420 KB')
    assert.equal(await usedBytes(userId), 420 * KB)
    await shot('s3-1-uploaded')
  })

  await t.test('copy is server-side, and an upload that does not fit is refused before any byte moves', async () => {
    await project('Atlas').getByRole('button', { name: 'Copy project' }).click()
    await project('Atlas (copy)').waitFor()
    await quotaReads('840 KB of 1 MB')
    const copyId = await project('Atlas (copy)').getAttribute('data-project-id')
    assert.deepEqual(await bucket.objects(keyOf(copyId)), { [keyOf(copyId, 'map.bin')]: 420 * KB })
    const before = puts.length
    const status = await upload(project('Atlas'), 'too-big.bin', 300 * KB)
    await status.filter({ hasText: 'Not enough storage' }).waitFor()
    assert.equal(await status.textContent(), 'Not enough storage: this file is 300 KB but only 184 KB of your 1 MB is free.')
    assert.equal(puts.length, before, 'the browser never sent it')
    assert.equal(keyOf(atlasId, 'too-big.bin') in (await bucket.objects(keyOf(atlasId))), false)
    await shot('s3-2-refused')
  })

  await t.test('delete removes the object and frees its bytes', async () => {
    const file = project('Atlas (copy)').getByTestId('file').filter({ hasText: 'map.bin' })
    await file.getByRole('button', { name: 'Delete' }).click()
    await quotaReads('420 KB of 1 MB')
    const copyId = await project('Atlas (copy)').getAttribute('data-project-id')
    assert.deepEqual(await bucket.objects(keyOf(copyId)), {})
    assert.equal(await usedBytes(userId), 420 * KB)
  })

  await t.test('a browser that declares less than it PUTs is refused at commit, and its object deleted', async () => {
    // The page lies about the file's size; the presigned URL cannot stop the bigger body.
    await page.evaluate(() => Object.defineProperty(File.prototype, 'size', { get: () => 10 * 1024, configurable: true }))
    const status = await upload(project('Atlas'), 'liar.bin', 700 * KB)
    // The commit's refusal (the earlier refusal at reserve reads "this file is").
    await status.filter({ hasText: 'bigger than declared' }).waitFor()
    assert.equal(await status.textContent(), 'Not enough storage: the file is bigger than declared and does not fit (only 594 KB of your 1 MB is free).')
    assert.equal(keyOf(atlasId, 'liar.bin') in (await bucket.objects(keyOf(atlasId))), false, 'the object is gone')
    assert.equal(await usedBytes(userId), 420 * KB)
    const { rows: held } = await db.query(`SELECT count(*)::int AS n FROM quota_reservations WHERE user_id = $1 AND status = 'pending'`, [userId])
    assert.equal(held[0].n, 0, 'the hold was given back')
    await page.reload()
    await quotaReads('420 KB of 1 MB')
    await shot('s3-3-liar-refused')
  })
})

