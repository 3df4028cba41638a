// One contender in its own Node process, so contenders never share a heap, an event loop or a
// GC. The parent sends `{ open }` once, then `{ run }` for each measurement, one at a time.
import { CONTENDERS } from './contenders.mjs'
import { projectId, userId } from './sql.mjs'
import { summarize } from './stats.mjs'

let contender = null
let runs = 0

/** A closed loop: `concurrency` callers, each starting its next call when the last resolves. */
async function measure({ op, concurrency, warmupMs, durationMs, users, hot }) {
  const tag = `b${process.pid.toString(36)}r${runs++}`
  let seq = 0
  const pick = () => (hot ? 1 : 1 + Math.floor(Math.random() * users))
  const calls = {
    checkQuota: () => contender.checkQuota(userId(pick()), 1024),
    recordUpload: () => {
      const user = userId(pick())
      return contender.recordUpload(user, projectId(user), 1, `${tag}-${seq++}`)
    },
    reserveCommit: () => {
      const user = userId(pick())
      return contender.reserveCommit(user, projectId(user), 1)
    },
  }
  const call = calls[op]
  if (!call) throw new Error(`bench: unknown operation ${op}`)

  const latencies = []
  let completed = 0
  let errors = 0
  let firstError = null
  let recording = false
  let stop = false
  const loop = async () => {
    while (!stop) {
      const start = performance.now()
      try {
        await call()
      } catch (error) {
        errors++
        firstError ??= String(error?.message ?? error).slice(0, 300)
      }
      completed++
      if (recording) latencies.push(performance.now() - start)
    }
  }
  const loops = Array.from({ length: concurrency }, loop)
  await new Promise((resolve) => setTimeout(resolve, warmupMs))
  recording = true
  const cpuStart = process.cpuUsage()
  const started = performance.now()
  await new Promise((resolve) => setTimeout(resolve, durationMs))
  const elapsed = performance.now() - started
  const cpu = process.cpuUsage(cpuStart)
  recording = false
  stop = true
  await Promise.all(loops)
  const cpuUsPerOp = (cpu.user + cpu.system) / Math.max(1, latencies.length)
  // `completed`: every call of the run, warm-up and drain included, for the database's work
  // per operation, which the parent measures around the whole run.
  return { ...summarize(latencies, elapsed), errors, firstError, cpuUsPerOp, completed }
}

process.on('message', async (message) => {
  try {
    if (message.open) {
      const { name, url, poolSize } = message.open
      contender = await CONTENDERS[name]({ url, poolSize })
      process.send({ ok: true })
    } else if (message.run) {
      process.send({ ok: true, result: await measure(message.run) })
    } else if (message.close) {
      await contender?.close()
      process.send({ ok: true })
      process.disconnect()
    }
  } catch (error) {
    process.send({ ok: false, error: String(error?.stack ?? error) })
  }
})
