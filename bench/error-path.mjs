// The cost of an error crossing into JS, two builds side by side in one process:
//   node bench/error-path.mjs OLD.node OLD-errors.js NEW.node NEW-errors.js [databaseUrl]
// Each build's NativeClient is called through its own lib/errors.js `fromNative`, as the package
// does: a rejected call (a closed client: CLIENT_CLOSED, no database) and a resolved `checkQuota`
// (the hot path, when a database URL is given). Short rounds alternate between the builds, and
// which goes first, so load from other processes falls on both alike; medians of the rounds.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const [oldNode, oldErrors, newNode, newErrors, databaseUrl] = process.argv.slice(2)
if (!newErrors) {
  console.error('usage: node bench/error-path.mjs OLD.node OLD-errors.js NEW.node NEW-errors.js [databaseUrl]')
  process.exit(2)
}
function load(node, errors) {
  const module = { exports: {} }
  process.dlopen(module, node)
  return { NativeClient: module.exports.NativeClient, fromNative: require(errors).fromNative }
}
const builds = { old: load(oldNode, oldErrors), new: load(newNode, newErrors) }

/** CPU time of this process (all its threads) per call, in µs: less disturbed than wall time
 *  by other processes on a busy machine. */
async function perCall(n, call) {
  const started = process.cpuUsage()
  for (let i = 0; i < n; i++) await call()
  const used = process.cpuUsage(started)
  return (used.user + used.system) / n
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

const ROUNDS = 31
const results = {}
for (const [name, { NativeClient, fromNative }] of Object.entries(builds)) {
  const closed = new NativeClient({ databaseUrl: 'postgres://127.0.0.1:1/none' })
  closed.close()
  const open = databaseUrl ? new NativeClient({ databaseUrl, poolSize: 1 }) : null
  results[name] = {
    rejected: async () =>
      perCall(2_000, async () => {
        try {
          await closed.checkQuota('user_bench', [1])
        } catch (error) {
          if (fromNative(error).code !== 'CLIENT_CLOSED') throw error
        }
      }),
    resolved: open && (async () => perCall(200, () => open.checkQuota('user_bench', [1]))),
    close: () => open?.close(),
    samples: { rejected: [], resolved: [] },
  }
}
for (let round = 0; round < ROUNDS; round++) {
  const order = round % 2 ? Object.values(results).reverse() : Object.values(results)
  for (const r of order) {
    r.samples.rejected.push(await r.rejected())
    if (r.resolved) r.samples.resolved.push(await r.resolved())
  }
}
for (const [name, r] of Object.entries(results)) {
  r.close()
  const resolved = r.samples.resolved.length ? ` resolved checkQuota ${median(r.samples.resolved).toFixed(1)} µs CPU/call` : ''
  console.log(`${name}: rejected ${median(r.samples.rejected).toFixed(2)} µs CPU/call${resolved} (median of ${ROUNDS} rounds)`)
}
