#!/usr/bin/env node
// `npm run bench` (after `npm run build`): storage-quota against pg, postgres.js and pgbench on
// the PostgreSQL at BENCH_DATABASE_URL / DATABASE_URL / postgres://postgres@127.0.0.1:5432/postgres,
// in throwaway databases it creates and drops. Prints Markdown and writes it, with the raw
// numbers as JSON, to bench/results/.
//
//   node bench/run.mjs [--quick] [--only=throughput,scale,migration,memory]
//                      [--reps=N] [--duration=ms] [--warmup=ms] [--ops=checkQuota,recordUpload,reserveCommit]
//                      [--concurrency=1,16,64] [--contenders=ours,pg,postgresjs,pgbench]
//                      [--rounds=20,200] [--memory-modes=bare,addon,ours,ours-zod,pg,postgresjs]
import { mkdir, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { execFileSync } from 'node:child_process'
import { admin, dropAll } from './lib/db.mjs'
import { throughput, throughputMarkdown } from './throughput.mjs'
import { MEMORY_MODES, memory, memoryMarkdown, migrationTime, plansMarkdown, scaleLatency, scaleMarkdown } from './scale.mjs'
import { flags } from './lib/args.mjs'

const args = flags()
const quick = Boolean(args.quick)
const list = (v, d) => (v ? String(v).split(',') : d)
const settings = {
  ops: list(args.ops, ['checkQuota', 'recordUpload', 'reserveCommit']),
  concurrencies: list(args.concurrency, ['1', '16', '64']).map(Number),
  distributions: list(args.users, ['random', 'hot']),
  contenders: list(args.contenders, ['ours', 'pg', 'postgresjs', 'pgbench']),
  reps: Number(args.reps ?? (quick ? 1 : 3)),
  warmupMs: Number(args.warmup ?? (quick ? 200 : 300)),
  durationMs: Number(args.duration ?? (quick ? 500 : 1200)),
  users: Number(args['bench-users'] ?? 10_000),
  poolSize: Number(args['pool-size'] ?? 16),
}
const only = list(args.only, ['throughput', 'scale', 'migration', 'memory'])
const log = (line) => process.stderr.write(`${line}\n`)

function machine() {
  const cpus = os.cpus()
  return {
    cpu: `${cpus[0]?.model ?? 'unknown'} × ${cpus.length}`,
    memory: `${(os.totalmem() / 2 ** 30).toFixed(0)} GiB`,
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    pgbench: execFileSync('pgbench', ['--version']).toString().trim(),
  }
}

process.on('SIGINT', async () => {
  await dropAll()
  process.exit(130)
})

const started = new Date()
const info = { started: started.toISOString(), settings, quick, machine: machine() }
const pgInfo = await admin(
  `SELECT version(), current_setting('synchronous_commit') AS synchronous_commit,
          current_setting('shared_buffers') AS shared_buffers, current_setting('max_connections') AS max_connections`,
)
info.postgres = pgInfo.rows[0]
info.loadBefore = os.loadavg()
log(`storage-quota bench ${quick ? '(quick) ' : ''}— ${info.machine.cpu}, load ${info.loadBefore.map((x) => x.toFixed(2)).join(' ')}`)

const sections = []
const raw = {}
try {
  if (only.includes('throughput')) {
    raw.throughput = await throughput(settings, log)
    sections.push(`### Throughput and latency\n\n${throughputMarkdown(raw.throughput, settings.contenders)}`)
  }
  if (only.includes('scale')) {
    const sizes = quick ? [1_000, 100_000] : [1_000, 1_000_000]
    raw.scale = await scaleLatency({ ...settings, sizes }, log)
    sections.push(
      `### Latency vs. table size (ours, random users)\n\n${scaleMarkdown(raw.scale.rows, sizes)}\n\n` +
        `Plans (EXPLAIN ANALYZE, BUFFERS) of the two statements for a user in the middle:\n\n${plansMarkdown(raw.scale.plans)}`,
    )
  }
  if (only.includes('migration')) {
    const projects = Number(args.projects ?? (quick ? 20_000 : 100_000))
    raw.migration = await migrationTime({ projects, projectsPerUser: 4 }, log)
    const m = raw.migration
    sections.push(
      `### Migration on an existing app\n\n` +
        `\`migrate()\` + \`backfill()\` on a database with ${m.projects.toLocaleString('en-US')} projects (with \`size_bytes\`) of ` +
        `${m.users.toLocaleString('en-US')} owners: **${(m.ms / 1000).toFixed(2)} s** (schema ${(m.schemaMs / 1000).toFixed(2)} s, backfill ${(m.backfillMs / 1000).toFixed(2)} s) ` +
        (m.defaults.ok ? '' : `with \`statementTimeoutMs: 0\` — with the default options it failed: ${m.defaults.code}, "${m.defaults.message}" ` ) +
        `(${m.paths.toLocaleString('en-US')} storage paths and ${m.ledger.toLocaleString('en-US')} baseline ledger entries written).`,
    )
  }
  if (only.includes('memory')) {
    const reps = Number(args.reps ?? (quick ? 1 : 3))
    const rounds = list(args.rounds, ['20']).map(Number)
    const modes = list(args['memory-modes'], MEMORY_MODES)
    raw.memory = []
    for (const r of rounds) {
      const result = await memory({ poolSize: settings.poolSize, reps, rounds: r, modes }, log)
      raw.memory.push(result)
      sections.push(`### Memory after ${r} rounds (RSS after GC, median of ${reps})\n\n${memoryMarkdown(result, settings.poolSize)}`)
    }
  }
} finally {
  await dropAll()
}

info.loadAfter = os.loadavg()
info.seconds = Math.round((Date.now() - started) / 1000)
const header =
  `## Run ${info.started}${quick ? ' (quick)' : ''}\n\n` +
  `${info.machine.cpu}, ${info.machine.memory}, ${info.machine.kernel}; Node ${info.machine.node}; ` +
  `${info.postgres.version.split(',')[0]} on loopback (synchronous_commit=${info.postgres.synchronous_commit}, ` +
  `shared_buffers=${info.postgres.shared_buffers}); ${info.machine.pgbench}.\n` +
  `Load average before/after: ${info.loadBefore.map((x) => x.toFixed(2)).join(' ')} / ${info.loadAfter.map((x) => x.toFixed(2)).join(' ')}. ` +
  `Pool size ${settings.poolSize} everywhere; ${settings.reps} repetition(s) of ${settings.durationMs} ms after ${settings.warmupMs} ms warm-up; ` +
  `${settings.users.toLocaleString('en-US')} users seeded; took ${info.seconds} s.\n` +
  `Command: \`node bench/run.mjs ${process.argv.slice(2).join(' ')}\``.trimEnd()
const markdown = `${header}\n\n${sections.join('\n\n')}\n`
process.stdout.write(markdown)
const dir = new URL('./results/', import.meta.url)
await mkdir(dir, { recursive: true })
const stamp = info.started.replace(/[:.]/g, '-')
await writeFile(new URL(`${stamp}.md`, dir), markdown)
await writeFile(new URL(`${stamp}.json`, dir), JSON.stringify({ info, raw }, null, 2))
log(`wrote bench/results/${stamp}.md and .json`)
