// Parent side of bench/lib/worker.mjs: one long-lived child process per contender.
import { fork } from 'node:child_process'

const WORKER = new URL('./worker.mjs', import.meta.url)

export class Worker {
  #child
  #pending = null
  #gentle = false

  /** The contender's process id (bench/breakdown.mjs reads its threads' CPU from /proc). */
  get pid() {
    return this.#child.pid
  }

  /** `name` is a contender, optionally with environment for A/B runs: `ours@SOME_VAR=1`. */
  constructor(name) {
    this.name = name
    const [contender, ...assignments] = name.split('@')
    this.contender = contender
    const env = { ...process.env, ...Object.fromEntries(assignments.map((a) => a.split('='))) }
    // BENCH_WORKER_NODE_ARGS: extra node flags for the contenders' processes (e.g. --cpu-prof).
    const execArgv = (process.env.BENCH_WORKER_NODE_ARGS ?? '').split(' ').filter(Boolean)
    this.#child = fork(WORKER, [], { env, execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    this.#gentle = execArgv.length > 0
    this.#child.on('message', (message) => {
      const pending = this.#pending
      this.#pending = null
      if (!pending) return
      if (message.ok) pending.resolve(message.result)
      else pending.reject(new Error(`${this.name}: ${message.error}`))
    })
    this.#child.on('exit', (code) => {
      this.#pending?.reject(new Error(`${this.name} worker exited (${code})`))
      this.#pending = null
    })
  }

  #send(message) {
    if (this.#pending) throw new Error(`${this.name}: one request at a time`)
    return new Promise((resolve, reject) => {
      this.#pending = { resolve, reject }
      this.#child.send(message)
    })
  }

  open(options) {
    return this.#send({ open: { name: this.contender, ...options } })
  }

  run(spec) {
    return this.#send({ run: spec })
  }

  async close() {
    if (this.#child.exitCode !== null || !this.#child.connected) return
    await this.#send({ close: true }).catch(() => {})
  }

  kill() {
    // With extra node flags the child is left to exit on its own after close() (a profile is
    // written at exit).
    if (this.#gentle) return
    if (this.#child.exitCode === null) this.#child.kill()
  }
}
