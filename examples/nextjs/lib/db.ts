import pg from 'pg'

// The app's own connection pool for its own tables (`projects`). storage-quota has its own pool.
const globalForDb = globalThis as unknown as { appPool?: pg.Pool }

export const db =
  globalForDb.appPool ??
  (globalForDb.appPool = new pg.Pool({
    connectionString: process.env.DATABASE_URL || process.env.POSTGRES_URL,
    max: 5,
  }))

// An idle connection the server closed must not become an uncaught exception; the pool replaces it.
if (db.listenerCount('error') === 0) db.on('error', (error) => console.warn(`app pool: ${error.message}`))

export interface Project {
  id: string
  name: string
}

export async function listProjects(userId: string): Promise<Project[]> {
  const { rows } = await db.query<Project>(
    'SELECT id, name FROM projects WHERE user_id = $1 ORDER BY created_at, name',
    [userId],
  )
  return rows
}

/** The project if `userId` owns it. */
export async function findProject(userId: string, projectId: string): Promise<Project | null> {
  const { rows } = await db.query<Project>('SELECT id, name FROM projects WHERE id = $1 AND user_id = $2', [
    projectId,
    userId,
  ])
  return rows[0] ?? null
}

export async function insertProject(userId: string, name: string): Promise<Project> {
  const { rows } = await db.query<Project>(
    'INSERT INTO projects (user_id, name) VALUES ($1, $2) RETURNING id, name',
    [userId, name],
  )
  return rows[0]
}

export async function deleteProjectRow(projectId: string): Promise<void> {
  await db.query('DELETE FROM projects WHERE id = $1', [projectId])
}
