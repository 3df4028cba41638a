// Child process of hostile-disk.test.mjs, run in its own mount namespace (where /proc is empty
// as on macOS, or a filesystem is mounted inside a project): copies, measures and removes a
// project and prints what each step gave as one JSON line.
import { existsSync } from 'node:fs'
import { createClient } from '../../index.js'

const { DATABASE_URL, STORAGE_ROOT, USER_ID, SOURCE, TARGET, WATCH } = process.env
const client = createClient({ databaseUrl: DATABASE_URL, storageRoot: STORAGE_ROOT, logger: false })
const result = {}
const step = async (name, work) => {
  try {
    result[name] = await work()
  } catch (error) {
    result[name] = { error: error.code }
  }
}
await step('source', async () => {
  const { bytes, skipped } = await client.diskUsage(USER_ID, SOURCE)
  return { bytes, skipped }
})
await step('copy', async () => {
  const { copiedBytes, skipped } = await client.copyProject(USER_ID, SOURCE, TARGET)
  return { copiedBytes, skipped }
})
await step('target', async () => (await client.diskUsage(USER_ID, TARGET)).bytes)
await step('remove', async () => (await client.removeProject(USER_ID, SOURCE)).releasedBytes)
if (WATCH) result.watched = existsSync(WATCH)
await client.close()
console.log(JSON.stringify(result))
