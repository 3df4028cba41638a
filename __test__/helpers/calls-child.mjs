// Child process of memory.test.mjs: 20 rounds of 64 concurrent calls through the package, reads
// and charges alternating over the users of USERS (JSON: [[userId, projectId], …]), as
// bench/lib/rss-child.mjs serves them; prints the number of calls made.
import { createClient } from 'storage-quota' // the package's own ESM entry, as an app imports it

const users = JSON.parse(process.env.USERS)
const client = createClient({ databaseUrl: process.env.DATABASE_URL, storageRoot: process.env.STORAGE_ROOT, logger: false, poolSize: 16 })
let n = 0
const call = () => {
  const i = n++
  const [user, project] = users[(i >> 1) % users.length]
  return i % 2 === 0 ? client.checkQuota(user, 1) : client.recordUpload(user, project, 1, { uploadId: `call-${i}` })
}
for (let round = 0; round < 20; round++) await Promise.all(Array.from({ length: 64 }, call))
await client.close()
console.log(`calls ${n}`)
