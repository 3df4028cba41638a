// Child process of hostile-disk.test.mjs, run where /proc is empty (as on macOS): copies,
// measures and removes a project, and prints what it got as one JSON line.
import { createClient } from '../../index.js'

const { DATABASE_URL, STORAGE_ROOT, USER_ID, SOURCE, TARGET } = process.env
const client = createClient({ databaseUrl: DATABASE_URL, storageRoot: STORAGE_ROOT, logger: false })
const result = {}
try {
  const copied = await client.copyProject(USER_ID, SOURCE, TARGET)
  result.copiedBytes = copied.copiedBytes
  result.targetBytes = (await client.diskUsage(USER_ID, TARGET)).bytes
  const removed = await client.removeProject(USER_ID, SOURCE)
  result.releasedBytes = removed.releasedBytes
} catch (error) {
  result.error = `${error.code}: ${error.message}`
} finally {
  await client.close()
}
console.log(JSON.stringify(result))
