// A Node process holding one driver's pool with every connection open, for the memory table:
// `node --expose-gc rss-child.mjs <bare|addon|ours|ours-zod|pg|postgresjs> <url> <poolSize>`. Reports its RSS
// over IPC after a GC, then waits for the parent to count its connections and end it.
import { createRequire } from 'node:module'

import { projectId, userId } from './sql.mjs'

const require = createRequire(import.meta.url)
const [mode, url, poolSizeArg] = process.argv.slice(2)
const poolSize = Number(poolSizeArg)
const user = '1000001'
const SELECT = 'SELECT used_bytes, reserved_bytes, limit_bytes FROM user_quotas WHERE user_id = $1'

async function open() {
  if (mode === 'bare') return { call: async () => {}, close: async () => {} }
  if (mode === 'ours' || mode === 'ours-zod' || mode === 'addon') {
    // `ours` is the package as apps import it (with its Zod validation layer); `addon` the
    // native binding alone (which takes a list of sizes). Checks and uploads of distinct users
    // together open every connection of the pool.
    const options = { databaseUrl: url, poolSize, applicationName: `rss-${mode}` }
    // `ours-zod` also touches an exported Zod schema, which loads Zod (as every call did before
    // lib/args.js): the cost an app pays when it uses the schemas itself.
    if (mode === 'ours-zod') void require('../../index.js').UserIdSchema
    const client =
      mode === 'addon'
        ? new (require('../../binding.js').NativeClient)(options)
        : require('../../index.js').createClient(options)
    let n = 0
    const call = () => {
      const i = n++
      if (i % 2 === 0) return client.checkQuota(user, mode === 'addon' ? [1] : 1)
      const u = userId(1 + ((i >> 1) % 64))
      return client.recordUpload(u, projectId(u), 1, { uploadId: `rss-${process.pid}-${i}` })
    }
    return { call, close: async () => client.close() }
  }
  if (mode === 'pg') {
    const pg = require('pg')
    const pool = new pg.Pool({ connectionString: url, max: poolSize, application_name: 'rss-pg' })
    return { call: () => pool.query({ name: 'sq_select_usage', text: SELECT, values: [user] }), close: () => pool.end() }
  }
  if (mode === 'postgresjs') {
    const postgres = require('postgres')
    const sql = postgres(url, { max: poolSize, connection: { application_name: 'rss-postgresjs' } })
    return { call: () => sql.unsafe(SELECT, [user], { prepare: true }), close: () => sql.end({ timeout: 5 }) }
  }
  throw new Error(`unknown mode ${mode}`)
}

const driver = await open()
// Enough concurrent calls, for long enough, that every pooled connection opens and is used.
for (let round = 0; round < 20; round++) {
  await Promise.all(Array.from({ length: poolSize * 4 }, () => driver.call()))
}
globalThis.gc?.()
await new Promise((resolve) => setTimeout(resolve, 300))
globalThis.gc?.()
process.send({ rss: process.memoryUsage().rss, heapUsed: process.memoryUsage().heapUsed })
process.on('message', async () => {
  await driver.close()
  process.exit(0)
})
