// The request path whose native code link/hot.ld lays out together: a client with a pool of 16
// (every connection opened), and rounds of the calls an app makes per request — checks,
// charges, reservations (commit and cancel), deletions, usage, project paths — served
// concurrently. Run by ./generate.mjs under callgrind.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { createClient } = require('../../index.js')
const [url, storageRoot] = process.argv.slice(2)
const client = createClient({ databaseUrl: url, storageRoot, poolSize: 16, minConnections: 16, logger: false })
// [[userId, projectId], …] of projects the caller created.
const projects = JSON.parse(process.env.HOT_LAYOUT_PROJECTS)
let n = 0
async function request() {
  const i = n++
  const [user, project] = projects[i % projects.length]
  await client.checkQuota(user, [1, 2])
  await client.recordUpload(user, project, 10, { uploadId: `up-${i}` })
  const held = await client.reserveUpload(user, project, 5)
  await (i % 2 ? client.commitUpload(user, held.reservationId, 4) : client.cancelUpload(user, held.reservationId))
  await client.recordDeletion(user, project, undefined, { uploadId: `up-${i}` })
  await client.getUsage(user)
  await client.allocateProjectPath(user, project)
  await client.validatePath(user, project, 'a/b.txt')
}
for (let round = 0; round < 3; round++) await Promise.all(Array.from({ length: 64 }, request))
await client.close()
console.log(`requests ${n}`)
