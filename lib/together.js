'use strict'

/**
 * Calls of one kind made in one turn of the event loop, handed to the addon together: one napi
 * call and one promise settled for all of them instead of one of each per call (at 16 callers
 * those hand-overs between this thread and the addon's were what limited throughput;
 * BENCHMARKS.md, "Calls handed over together"). Each caller still gets exactly its own answer or
 * its own error. A lone call takes the single-call path, so at concurrency 1 nothing changes.
 */
class Together {
  #pending = null
  #alone
  #many

  /**
   * `alone(args)` sends one call; `many(list)` sends several and resolves one entry per call,
   * in order: its answer, or an `Error` for that call alone.
   */
  constructor(alone, many) {
    this.#alone = alone
    this.#many = many
  }

  /** Resolves or rejects as the call would alone. */
  add(args) {
    return new Promise((resolve, reject) => {
      if (this.#pending === null) {
        this.#pending = []
        queueMicrotask(() => this.#send())
      }
      this.#pending.push({ args, resolve, reject })
    })
  }

  /**
   * Sends what is pending now, each call on its own (close() does: a call made before it must
   * be in flight as it would have been alone, and a lone call takes its pool at once).
   */
  flushAlone() {
    const calls = this.#pending
    if (calls === null) return
    this.#pending = null
    for (const c of calls) {
      try {
        this.#alone(c.args).then(c.resolve, c.reject)
      } catch (error) {
        c.reject(error)
      }
    }
  }

  #send() {
    const calls = this.#pending
    if (calls === null || calls.length === 1) return this.flushAlone()
    this.#pending = null
    try {
      this.#many(calls.map((c) => c.args)).then(
        (answers) => {
          for (let i = 0; i < calls.length; i++) {
            if (answers[i] instanceof Error) calls[i].reject(answers[i])
            else calls[i].resolve(answers[i])
          }
        },
        (error) => {
          for (const c of calls) c.reject(error)
        },
      )
    } catch (error) {
      for (const c of calls) c.reject(error)
    }
  }
}

/**
 * The arguments of calls given as `[a, b, …]`, one array per position, as the addon's `…Many`
 * methods take them: `width` arrays, a missing argument (an option not given) as null.
 */
function columns(calls, width) {
  const out = []
  for (let k = 0; k < width; k++) out.push(calls.map((c) => c[k] ?? null))
  return out
}

module.exports = { Together, columns }
