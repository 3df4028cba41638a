// The migration versions this build ships, read from migrations/ (numbers may have gaps: each
// feature branch owns its own), so tests of "apply everything" do not list them by hand.
import { readdirSync } from 'node:fs'

export const VERSIONS = readdirSync(new URL('../../migrations/', import.meta.url))
  .map((name) => name.match(/^(\d{4})_.*\.up\.sql$/))
  .filter(Boolean)
  .map((match) => Number(match[1]))
  .sort((a, b) => a - b)

export const NAMES = readdirSync(new URL('../../migrations/', import.meta.url))
  .map((name) => name.match(/^(\d{4})_(.*)\.up\.sql$/))
  .filter(Boolean)
  .sort()
  .map((match) => `${Number(match[1])} ${match[2]}`)
