// Runs once when the server starts: bring the schema up to date before the first request.
// Skipped during `next build`, which needs no database.
export async function register() {
  if (process.env.NEXT_RUNTIME !== 'nodejs' || process.env.NEXT_PHASE === 'phase-production-build') return
  const { migrateOnStartup } = await import('./lib/quota')
  await migrateOnStartup()
}
