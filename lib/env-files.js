'use strict'

// The CLI reads the app's .env files the way Next.js does (@next/env): `.env.$NODE_ENV.local`,
// `.env.local` (not when NODE_ENV is `test`), `.env.$NODE_ENV`, `.env`, the first one to set a
// variable winning, and never over a variable the environment already has. Parsed with Node's
// own `util.parseEnv` (Node ≥ 20.12); no `$VAR` expansion.
const { readFileSync } = require('node:fs')
const { join } = require('node:path')
const util = require('node:util')

/** Loads the files found in `dir` into `env`; returns the names of the files read. */
function loadEnvFiles(dir = process.cwd(), env = process.env) {
  const mode = env.NODE_ENV || 'development'
  const names = [`.env.${mode}.local`, ...(mode === 'test' ? [] : ['.env.local']), `.env.${mode}`, '.env']
  const read = []
  for (const name of names) {
    let text
    try {
      text = readFileSync(join(dir, name), 'utf8')
    } catch {
      continue
    }
    if (typeof util.parseEnv !== 'function') {
      process.stderr.write(`storage-quota: ${name} not read: it needs Node.js 20.12 or later (util.parseEnv)\n`)
      continue
    }
    read.push(name)
    // Files come highest priority first, so "not set yet" covers both rules.
    for (const [key, value] of Object.entries(util.parseEnv(text))) {
      if (!(key in env)) env[key] = value
    }
  }
  return read
}

module.exports = { loadEnvFiles }
