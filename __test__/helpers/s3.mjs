// A real S3-compatible server for tests: moto's standalone server (PyPI `moto[server]`, installed
// by .ci/run) on a free local port, with a fresh bucket; stopped when the test file ends.
// moto accepts unsigned and expired requests, so `checkPresignedUrl` verifies a presigned URL's
// SigV4 signature and expiry itself.
import { spawn, spawnSync } from 'node:child_process'
import { createHash, createHmac, randomBytes } from 'node:crypto'
import { after } from 'node:test'
import { serverPort } from './ports.mjs'

export const ACCESS_KEY_ID = 'AKIATESTSTORAGEQUOTA'
export const SECRET_ACCESS_KEY = 'test-secret-never-logged-9f8e7d6c5b4a'
export const REGION = 'us-east-1'

// `python3 -m moto.server` rather than the `moto_server` script: it works whether or not pip's
// script directory (or a pyenv shim) is on PATH.
const MOTO = ['python3', ['-m', 'moto.server']]
export const motoInstalled = spawnSync('python3', ['-c', 'import moto.server'], { stdio: 'ignore' }).status === 0

// moto refuses anonymous GETs but never checks a signature: any SigV4-shaped header reads.
const READER = {
  authorization: `AWS4-HMAC-SHA256 Credential=${ACCESS_KEY_ID}/20260101/${REGION}/s3/aws4_request, SignedHeaders=host, Signature=0`,
}

/**
 * Starts moto on 127.0.0.1 and creates `bucket`. Returns `{ endpoint, bucket, storage(prefix),
 * objects(prefix), get(key), put(key, body) }`; `objects` lists keys with sizes straight from the
 * server, for checks that do not go through the library.
 */
export async function startS3(bucket = `sq-test-${randomBytes(4).toString('hex')}`) {
  const port = await serverPort()
  const child = spawn(MOTO[0], [...MOTO[1], '-H', '127.0.0.1', '-p', String(port)], { stdio: 'ignore' })
  const exited = new Promise((resolve) => child.once('exit', resolve))
  after(async () => {
    child.kill('SIGTERM')
    await exited
  })
  const endpoint = `http://127.0.0.1:${port}`
  // Ready when it answers; give up after 30 s (or at once if it died).
  const deadline = Date.now() + 30_000
  let dead = false
  void exited.then(() => (dead = true))
  for (;;) {
    if (dead) throw new Error('moto (python3 -m moto.server) exited before it was ready')
    const ok = await fetch(`${endpoint}/`).then(
      (r) => r.ok,
      () => false,
    )
    if (ok) break
    if (Date.now() > deadline) throw new Error('moto (python3 -m moto.server) did not start within 30 s')
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  const created = await fetch(`${endpoint}/${bucket}`, { method: 'PUT' })
  if (!created.ok) throw new Error(`creating bucket ${bucket}: ${created.status}`)
  return {
    endpoint,
    bucket,
    storage: (prefix) => ({
      backend: 's3',
      bucket,
      ...(prefix ? { prefix } : {}),
      endpoint,
      region: REGION,
      accessKeyId: ACCESS_KEY_ID,
      secretAccessKey: SECRET_ACCESS_KEY,
    }),
    async objects(prefix = '') {
      const response = await fetch(`${endpoint}/${bucket}?list-type=2&prefix=${encodeURIComponent(prefix)}`)
      const xml = await response.text()
      const found = {}
      for (const [, body] of xml.matchAll(/<Contents>([\s\S]*?)<\/Contents>/g)) {
        const key = body.match(/<Key>([\s\S]*?)<\/Key>/)[1]
        found[key.replaceAll('&amp;', '&')] = Number(body.match(/<Size>(\d+)<\/Size>/)[1])
      }
      return found
    },
    async get(key) {
      const response = await fetch(`${endpoint}/${bucket}/${key}`, { headers: READER })
      return response.ok ? Buffer.from(await response.arrayBuffer()) : null
    },
    async head(key) {
      const response = await fetch(`${endpoint}/${bucket}/${key}`, { method: 'HEAD', headers: READER })
      return response.ok ? response.headers : null
    },
    async put(key, body) {
      const response = await fetch(`${endpoint}/${bucket}/${key}`, { method: 'PUT', body })
      if (!response.ok) throw new Error(`PUT ${key}: ${response.status}`)
    },
  }
}

const sha256 = (data) => createHash('sha256').update(data).digest('hex')
const hmac = (key, data) => createHmac('sha256', key).update(data).digest()
const strict = (s) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)

/**
 * Verifies a presigned PUT URL as S3 would: SigV4 query signature recomputed with the secret,
 * for the host the URL names, and returns `{ expiresAt, signedHeaders, credential }`. Throws
 * when the signature does not match.
 */
export function checkPresignedUrl(url, secret = SECRET_ACCESS_KEY) {
  const parsed = new URL(url)
  const q = parsed.searchParams
  const algorithm = q.get('X-Amz-Algorithm')
  const credential = q.get('X-Amz-Credential')
  const date = q.get('X-Amz-Date')
  const expires = Number(q.get('X-Amz-Expires'))
  const signedHeaders = q.get('X-Amz-SignedHeaders')
  const signature = q.get('X-Amz-Signature')
  if (algorithm !== 'AWS4-HMAC-SHA256' || !credential || !date || !signature) throw new Error('not a SigV4 presigned URL')
  const [, day, region, service] = credential.split('/')
  const query = [...q.entries()]
    .filter(([k]) => k !== 'X-Amz-Signature')
    .map(([k, v]) => [strict(k), strict(v)])
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&')
  const headers = { host: parsed.host }
  const canonical = [
    'PUT',
    parsed.pathname,
    query,
    signedHeaders
      .split(';')
      .map((h) => `${h}:${headers[h]}\n`)
      .join(''),
    signedHeaders,
    'UNSIGNED-PAYLOAD',
  ].join('\n')
  const scope = `${day}/${region}/${service}/aws4_request`
  const toSign = ['AWS4-HMAC-SHA256', date, scope, sha256(canonical)].join('\n')
  let key = hmac(`AWS4${secret}`, day)
  for (const part of [region, service, 'aws4_request']) key = hmac(key, part)
  const expected = createHmac('sha256', key).update(toSign).digest('hex')
  if (expected !== signature) throw new Error('the presigned URL signature does not verify')
  const signedAt = Date.UTC(+date.slice(0, 4), +date.slice(4, 6) - 1, +date.slice(6, 8), +date.slice(9, 11), +date.slice(11, 13), +date.slice(13, 15))
  return { expiresAt: new Date(signedAt + expires * 1000), signedAt: new Date(signedAt), signedHeaders, credential }
}

/** Skips (off CI) where moto is missing; CI installs it (.ci/run). */
export const skipWithoutMoto = !motoInstalled && !process.env.CI ? 'moto is not installed (pip install "moto[server]")' : false

export const PREFIX = 'projects'

/**
 * What the s3 test files share: a database, a moto bucket, an s3 client (its `storageRoot` is
 * the local side of moves) and a local-only client, closed when the file ends; plus small
 * helpers. Call at a test file's top level.
 */
export async function s3Fixture(tag, { createClient, createTestDatabase }) {
  const db = await createTestDatabase(tag)
  const bucket = await startS3()
  const s3 = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, storage: bucket.storage(PREFIX), logger: false })
  const local = createClient({ databaseUrl: db.url, storageRoot: db.storageRoot, logger: false })
  await s3.migrate()
  after(async () => {
    await s3.close()
    await local.close()
  })
  return {
    db,
    bucket,
    s3,
    local,
    keyOf: (user, project, file = '') => `${PREFIX}/${user}/${project}/${file}`,
    async put(url, body) {
      const response = await fetch(url, { method: 'PUT', body, headers: { 'content-type': 'application/octet-stream' } })
      if (response.status !== 200) throw new Error(`PUT ${response.status}: ${await response.text()}`)
    },
    usedBytes: async (user) => (await s3.getUsage(user)).usedBytes,
  }
}

// Settling reservations, the owner first.
export const commit = (client, user, id) => client.commitUpload(user, id)
export const cancel = (client, user, id) => client.cancelUpload(user, id)
