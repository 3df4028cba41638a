'use strict'

const { NativeClient } = require('../binding.js')
const { StorageQuotaError, describeThrown, fromNative, fromZod } = require('./errors.js')
const { createLogger } = require('./log.js')
const { Together, columns } = require('./together.js')
const { checkQuotaMany, recordUploadMany } = require('./packed.js')
const S = require('./args.js')

/** Only for A/B runs of bench/ (BENCHMARKS.md): `STORAGE_QUOTA_BENCH_JS_BATCH=0` hands each call over alone. */
const TOGETHER = process.env.STORAGE_QUOTA_BENCH_JS_BATCH !== '0'

function parse(schema, value, what) {
  let failure
  try {
    return schema.check(value, S.NO_PATH)
  } catch (error) {
    if (error instanceof S.Issue) throw fromZod({ issues: [{ path: error.path, message: error.message }] }, what)
    // A getter or Proxy trap that throws while Zod reads the value (or describes it in an
    // issue's message): still the caller's bad input.
    failure = new StorageQuotaError('INVALID_ARGUMENT', `invalid ${what}: reading it threw (${describeThrown(error)})`)
  }
  throw failure
}

/**
 * A storage-quota client with its own PostgreSQL pool. Every method validates its arguments
 * (rejecting with code INVALID_ARGUMENT before anything is sent) and rejects with a
 * StorageQuotaError carrying a stable `code`.
 */
class StorageQuotaClient {
  #native
  #log
  #slowCallMs
  /** checkQuota, recordUpload, reserveUpload, commitUpload and recordDeletion calls of one turn of the event loop, handed over together. */
  #checks
  #uploads
  #reserves
  #commits
  #deletions
  /** Calls made and not yet settled: close() waits for them before it closes the pool. */
  #inFlight = 0
  /** Set by close(): later calls are refused. */
  #closing = null
  #drained = null

  constructor(options = {}) {
    const { logger, logLevel, slowCallMs, projects, ...nativeOptions } = parse(S.ClientOptionsSchema, options ?? {}, 'options')
    if (projects !== undefined) nativeOptions.projects = projects === 'standalone' ? { standalone: true } : projects
    this.#log = createLogger(logger, logLevel)
    this.#slowCallMs = slowCallMs ?? 250
    try {
      this.#native = new NativeClient(nativeOptions)
    } catch (error) {
      throw fromNative(error)
    }
    const native = this.#native
    this.#checks = new Together(
      (args) => native.checkQuota(...args),
      (calls) => checkQuotaMany(native, calls),
    )
    this.#uploads = new Together(
      (args) => native.recordUpload(...args),
      (calls) => recordUploadMany(native, calls),
    )
    this.#reserves = new Together(
      (args) => native.reserveUpload(...args),
      (calls) => native.reserveUploadMany(...columns(calls, 5)),
    )
    this.#commits = new Together(
      (args) => native.commitUpload(...args),
      (calls) => native.commitUploadMany(...columns(calls, 3)),
    )
    this.#deletions = new Together(
      (args) => native.recordDeletion(...args),
      (calls) => native.recordDeletionMany(...columns(calls, 5)),
    )
  }

  /**
   * Whether `bytes` more fit — or, given a list of sizes (a multi-file upload), whether all of
   * them do, how much is missing, and which would fit in order. Resolves `{ allowed: false, … }`
   * rather than rejecting when there is no room.
   */
  async checkQuota(userId, bytes) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const sizes = Array.isArray(bytes) ? parse(S.BytesListSchema, bytes, 'bytes') : [parse(S.BytesSchema, bytes, 'bytes')]
    const check = await this.#call('checkQuota', (n) => (TOGETHER ? this.#checks.add([user, sizes]) : n.checkQuota(user, sizes)))
    if (check.wouldRefuse && check.mode === 'shadow') this.#log('shadow_refusal', { operation: 'checkQuota', userId: user, requestedBytes: check.requestedBytes })
    return check
  }

  /** The project's storage path; creates the record and the directory on first call. */
  async allocateProjectPath(userId, projectId) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const project = parse(S.ProjectIdSchema, projectId, 'projectId')
    return this.#call('allocateProjectPath', (n) => n.allocateProjectPath(user, project))
  }

  /**
   * Where the project lives (or would): `{ backend, key, path }`. Pure: touches neither the
   * database nor the disk, and needs no project row.
   */
  projectPathFor(userId, projectId) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const project = parse(S.ProjectIdSchema, projectId, 'projectId')
    try {
      return this.#native.projectPathFor(user, project)
    } catch (error) {
      throw fromNative(error)
    }
  }

  /**
   * Whether `candidate` (relative to the project directory, or absolute) lies inside it.
   * Resolves `{ inside: true, path, relativePath }` or `{ inside: false, reason }`.
   */
  async validatePath(userId, projectId, candidate) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const project = parse(S.ProjectIdSchema, projectId, 'projectId')
    const path = parse(S.CandidatePathSchema, candidate, 'candidate')
    return this.#call('validatePath', (n) => n.validatePath(user, project, path))
  }

  /** The project's usage counted from its files on disk (links are never followed). */
  async diskUsage(userId, projectId) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const project = parse(S.ProjectIdSchema, projectId, 'projectId')
    return this.#call('diskUsage', (n) => n.diskUsage(user, project))
  }

  /**
   * Charges an upload of `bytes` to `projectId`. Rejects with QUOTA_EXCEEDED when it does not
   * fit; with the same `uploadId` twice, the upload counts once. With `replacesBytes` (an
   * overwrite) only the difference is charged.
   */
  async recordUpload(userId, projectId, bytes, options = {}) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const project = parse(S.ProjectIdSchema, projectId, 'projectId')
    const size = parse(S.BytesSchema, bytes, 'bytes')
    const opts = parse(S.RecordUploadOptionsSchema, options ?? {}, 'options')
    return this.#charged('recordUpload', user, () =>
      TOGETHER ? this.#uploads.add([user, project, size, opts]) : this.#native.recordUpload(user, project, size, opts),
    )
  }

  /** Holds `bytes` for an upload whose bytes arrive later; they count at once. */
  async reserveUpload(userId, projectId, bytes, options = {}) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const project = parse(S.ProjectIdSchema, projectId, 'projectId')
    const size = parse(S.BytesSchema, bytes, 'bytes')
    const { ttlMs, reservationId, presign, fileName } = parse(S.ReserveUploadOptionsSchema, options ?? {}, 'options')
    if (presign) {
      return this.#charged('reserveUpload', user, () => this.#native.reservePresignedUpload(user, project, fileName, size, ttlMs, reservationId))
    }
    return this.#charged('reserveUpload', user, () =>
      TOGETHER ? this.#reserves.add([user, project, size, ttlMs, reservationId]) : this.#native.reserveUpload(user, project, size, ttlMs, reservationId),
    )
  }

  /** The project's files with their sizes, from its directory or its bucket prefix. */
  async listProjectFiles(userId, projectId) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const project = parse(S.ProjectIdSchema, projectId, 'projectId')
    return this.#call('listProjectFiles', (n) => n.listProjectFiles(user, project))
  }

  /**
   * Deletes one file of the project (on disk or in the bucket) and gives back its measured
   * bytes. `{ deletionId }` makes a retry release once.
   */
  async deleteProjectFile(userId, projectId, fileName, options = {}) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const project = parse(S.ProjectIdSchema, projectId, 'projectId')
    const file = parse(S.FileNameSchema, fileName, 'fileName')
    const { deletionId } = parse(S.DeleteProjectFileOptionsSchema, options ?? {}, 'options')
    return this.#call('deleteProjectFile', (n) => n.deleteProjectFile(user, project, file, deletionId))
  }

  /**
   * Moves a project's files to the other backend (`{ to: 's3' }` or `{ to: 'local' }`): copies
   * every file, verifies the sizes, flips the record, deletes the source. Usage is unchanged.
   * Run it again after an interruption: it resumes. `CONFLICT` (`UPLOAD_IN_FLIGHT`) while an
   * upload to the project holds a reservation.
   */
  async moveProjectStorage(userId, projectId, options) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const project = parse(S.ProjectIdSchema, projectId, 'projectId')
    const { to } = parse(S.MoveProjectOptionsSchema, options, 'options')
    return this.#call('moveProjectStorage', (n) => n.moveProjectStorage(user, project, to))
  }

  /**
   * Turns the user's reservation into usage: `actualBytes` (default: the bytes reserved; smaller
   * always works, larger only if the difference fits). A retry answers `duplicate: true`.
   * A presigned reservation (`reserveUpload(…, { presign: true })`) is charged the object's real
   * size instead, read with a HEAD; one that does not fit is `QUOTA_EXCEEDED` and its object
   * deleted (in `enforce` mode).
   */
  async commitUpload(userId, reservationId, actualBytes) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const id = parse(S.ReservationIdSchema, reservationId, 'reservationId')
    const actual = actualBytes === undefined ? undefined : parse(S.BytesSchema, actualBytes, 'actualBytes')
    return this.#charged('commitUpload', user, () => (TOGETHER ? this.#commits.add([user, id, actual]) : this.#native.commitUpload(user, id, actual)))
  }

  /** Gives the user's reservation's bytes back. A retry answers `duplicate: true`. */
  async cancelUpload(userId, reservationId) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const id = parse(S.ReservationIdSchema, reservationId, 'reservationId')
    return this.#call('cancelUpload', (n) => n.cancelUpload(user, id))
  }

  /** Gives back every expired reservation now (they stop counting at expiry anyway). */
  async sweepExpiredReservations() {
    const users = await this.#call('sweepExpiredReservations', (n) => n.sweepExpiredReservations())
    return { users }
  }

  /**
   * Deletes settled reservations and folds ledger entries older than `historyRetentionDays`
   * (default 90) into one carry entry per project; counters and sums do not change.
   */
  async pruneHistory() {
    return this.#call('pruneHistory', (n) => n.pruneHistory())
  }

  /**
   * Releases a deleted file's bytes. Works over quota; never below zero; never more than the
   * project has counted. Name the upload (`{ uploadId }`: exactly its bytes, once) or the bytes
   * (with an optional `deletionId` so a retry releases once).
   */
  async recordDeletion(userId, projectId, bytes, options = {}) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const project = parse(S.ProjectIdSchema, projectId, 'projectId')
    const size = bytes === undefined || bytes === null ? undefined : parse(S.BytesSchema, bytes, 'bytes')
    const { uploadId, deletionId } = parse(S.RecordDeletionOptionsSchema, options ?? {}, 'options')
    return this.#call('recordDeletion', (n) =>
      TOGETHER ? this.#deletions.add([user, project, size, uploadId, deletionId]) : n.recordDeletion(user, project, size, uploadId, deletionId),
    )
  }

  /** A new project: quota check, storage path, initial size counted (once). */
  async registerProject(userId, projectId, options = {}) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const project = parse(S.ProjectIdSchema, projectId, 'projectId')
    const { sizeBytes } = parse(S.RegisterProjectOptionsSchema, options ?? {}, 'options')
    return this.#charged('registerProject', user, () => this.#native.registerProject(user, project, sizeBytes))
  }

  /**
   * Copies a project's files into a new (already created, empty) project of the same user and
   * counts them. Refused up front when the source does not fit; on failure nothing stays.
   * Retries and concurrent calls for one new project resolve once (`duplicate: true`, or
   * `CONFLICT` `KEY_REUSED` for another source).
   */
  async copyProject(userId, sourceProjectId, newProjectId) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const source = parse(S.ProjectIdSchema, sourceProjectId, 'sourceProjectId')
    const target = parse(S.ProjectIdSchema, newProjectId, 'newProjectId')
    return this.#charged('copyProject', user, () => this.#native.copyProject(user, source, target))
  }

  /** Releases a project's bytes, cancels its reservations and (default) deletes its files. */
  async removeProject(userId, projectId, options = {}) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const project = parse(S.ProjectIdSchema, projectId, 'projectId')
    const { deleteFiles = true } = parse(S.RemoveProjectOptionsSchema, options ?? {}, 'options')
    return this.#call('removeProject', (n) => n.removeProject(user, project, deleteFiles))
  }

  /** Sets a user's limit (plan upgrade or downgrade), recorded with who and why. */
  async setQuotaLimit(userId, limitBytes, options = {}) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const limit = parse(S.BytesSchema, limitBytes, 'limitBytes')
    const { changedBy, reason } = parse(S.SetQuotaLimitOptionsSchema, options ?? {}, 'options')
    const usage = await this.#call('setQuotaLimit', (n) => n.setQuotaLimit(user, limit, changedBy, reason))
    this.#log('limit_changed', { userId: user, limitBytes: limit, changedBy: changedBy ?? null })
    return usage
  }

  /** Usage for the UI: numbers, state, human-readable strings; `{ projects: true }` adds each project. */
  async getUsage(userId, options = {}) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const { projects = false } = parse(S.GetUsageOptionsSchema, options ?? {}, 'options')
    return this.#call('getUsage', (n) => n.getUsage(user, projects))
  }

  /**
   * Recomputes usage from the ledger for one user (or all, when `userId` is omitted), reports
   * drift per user and project (`{ disk: true }` adds the bytes on disk), and with `{ fix: true }`
   * sets the counters from the ledger. Safe while uploads are going on.
   */
  async reconcile(userId, options = {}) {
    if (userId !== null && typeof userId === 'object') [userId, options] = [undefined, userId]
    const user = userId === undefined || userId === null ? undefined : parse(S.UserIdSchema, userId, 'userId')
    const { fix = false, disk = false } = parse(S.ReconcileOptionsSchema, options ?? {}, 'options')
    const report = await this.#call('reconcile', (n) => n.reconcile(user, fix, disk))
    for (const drift of report.users) {
      if (drift.driftBytes !== 0 || drift.reservedDriftBytes !== 0) {
        this.#log('drift_found', {
          userId: drift.userId,
          driftBytes: drift.driftBytes,
          reservedDriftBytes: drift.reservedDriftBytes,
          fixed: drift.fixed,
        })
      }
    }
    return report
  }

  /**
   * Applies pending schema migrations (each holds its locks for milliseconds; a lock not
   * granted at once is retried with backoff). Resolves to `{ applied, lockRetries, backfill }`.
   * An app with more than 10,000 projects is not backfilled here: `backfill.done` is false and
   * a `backfill_pending` event says to run `storage-quota backfill` (or `backfill()`).
   */
  async migrate() {
    const result = await this.#call('migrate', (n) => n.migrate())
    if (!result.backfill.done) {
      this.#log('backfill_pending', {
        phase: result.backfill.phase,
        scanned: result.backfill.scanned,
        totalProjects: result.backfill.totalProjects,
        run: 'npx storage-quota backfill',
      })
    }
    return result
  }

  /**
   * Runs the backfill of existing projects to its end in committed batches, resuming where an
   * earlier run stopped. `onProgress(progress)` after every batch; `signal` stops it between
   * batches. Resolves to the last progress (`done: false` when stopped).
   */
  async backfill(options = {}) {
    const { batchSize = 10_000, onProgress, signal } = parse(S.BackfillOptionsSchema, options ?? {}, 'options')
    // Several calls, one operation: a close() meanwhile lets it run to its end.
    return this.#holding(async () => {
      let progress = await this.#step('backfillStatus', (n) => n.backfillStatus())
      while (!progress.done && !signal?.aborted) {
        progress = await this.#step('backfill', (n) => n.backfillStep(batchSize))
        if (onProgress) onProgress(progress)
      }
      return progress
    })
  }

  /** Where the backfill is, without doing any of it. */
  async backfillStatus() {
    return this.#call('backfillStatus', (n) => n.backfillStatus())
  }

  /**
   * Prepares big tables for pending migrations (an upgrade from 0.1.0 whose own tables hold
   * more than 10,000 rows) in committed steps while the app keeps running, resuming where an
   * earlier run stopped; `migrate()` refuses those migrations (`MIGRATION_REQUIRED`) until it is
   * done. `onProgress(preparation)` after every step (awaited); `signal` stops it between steps.
   * Resolves to the last state (`done: false` when stopped). `storage-quota migrate` runs it.
   */
  async prepareMigrations(options = {}) {
    const { batchSize = 10_000, onProgress, signal } = parse(S.BackfillOptionsSchema, options ?? {}, 'options')
    return this.#holding(async () => {
      let state = await this.#step('migrationPreparation', (n) => n.migrationPreparation())
      while (!state.done && !signal?.aborted) {
        state = await this.#step('prepareMigrations', (n) => n.prepareMigrationsStep(batchSize))
        if (onProgress) await onProgress(state)
      }
      return state
    })
  }

  /** Where the preparation of big tables for pending migrations is, without doing any of it. */
  async migrationPreparation() {
    return this.#call('migrationPreparation', (n) => n.migrationPreparation())
  }

  /**
   * Reverts the `steps` (default 1) most recent migrations. Resolves to `{ reverted }`.
   * `{ discardUsage: true }` lets 0001's rollback drop recorded usage (back up first).
   */
  async rollback(steps = 1, options = {}) {
    const count = parse(S.StepsSchema, steps, 'steps')
    const { discardUsage = false } = parse(S.RollbackOptionsSchema, options ?? {}, 'options')
    const reverted = await this.#call('rollback', (n) => n.rollback(count, discardUsage))
    return { reverted }
  }

  /** Applied and pending migrations. */
  async migrationStatus() {
    return this.#call('migrationStatus', (n) => n.migrationStatus())
  }

  /**
   * Every call made before close() finishes (close() resolves once they have settled); calls
   * made after it reject with CLIENT_CLOSED. The pool's connections close then.
   */
  close() {
    if (this.#closing === null) {
      // Calls made before close() in this turn of the event loop are in flight, as they would
      // be had each been handed over alone.
      for (const kind of [this.#checks, this.#uploads, this.#reserves, this.#commits, this.#deletions]) kind.flushAlone()
      // The addon takes its pool when a call's task starts, which may be after this line: it
      // is closed only once no call is left to start.
      const drained = this.#inFlight === 0 ? Promise.resolve() : new Promise((resolve) => (this.#drained = resolve))
      this.#closing = drained.then(() => this.#native.close())
    }
    return this.#closing
  }

  /** Runs an operation of several calls as one: admitted (or refused) as a whole. */
  async #holding(work) {
    if (this.#closing !== null) throw closedError()
    this.#inFlight++
    try {
      return await work()
    } finally {
      if (--this.#inFlight === 0 && this.#drained !== null) this.#drained()
    }
  }

  /** A charge (`userId` given): also logs its refusal, or its shadow-mode would-be refusal. */
  #charged(operation, userId, run) {
    return this.#call(operation, run, userId)
  }

  // One async frame per call, and the argument checks' results are not wrapped in objects:
  // what a call leaves for V8's young generation to collect is what grows its committed size.
  // The clock is `Date.now()` (a V8 builtin; ms is enough for `slowCallMs`): `performance.now()`
  // is JS that gets hot after ~1,000 calls, and optimizing it is what pages V8's optimizing
  // compiler into a process otherwise running none (~4 MB of RSS, BENCHMARKS.md).
  async #call(operation, run, chargedUser) {
    // No fourth parameter (a `held` flag was one): it tipped V8 into optimizing this function.
    if (this.#closing !== null) throw closedError()
    const started = Date.now()
    let result
    let failure = null
    this.#inFlight++
    try {
      result = await run(this.#native)
    } catch (error) {
      failure = fromNative(error)
    }
    if (--this.#inFlight === 0 && this.#drained !== null) this.#drained()
    const ms = Date.now() - started
    if (ms > this.#slowCallMs) this.#log('slow_call', { operation, ms: Math.round(ms) })
    if (failure !== null) {
      if (chargedUser !== undefined && failure.code === 'QUOTA_EXCEEDED') {
        this.#log('quota_refused', {
          operation,
          userId: chargedUser,
          requestedBytes: failure.requestedBytes,
          remainingBytes: failure.remainingBytes,
          limitBytes: failure.limitBytes,
        })
      }
      throw failure
    }
    if (chargedUser !== undefined && result.wouldRefuse && result.mode === 'shadow') {
      this.#log('shadow_refusal', { operation, userId: chargedUser })
    }
    return result
  }

  /** A later step of an operation `#holding` admitted: made even if close() came meanwhile. */
  #step(operation, run) {
    // #call checks #closing before its first await, so it is set aside for that synchronous
    // part only.
    const closing = this.#closing
    this.#closing = null
    try {
      return this.#call(operation, run)
    } finally {
      this.#closing = closing
    }
  }

}

/** What the addon answers a call made after close(), given here before reaching it. */
function closedError() {
  return new StorageQuotaError('CLIENT_CLOSED', 'this storage-quota client was closed; create a new one')
}

/** `standalone`, or `table[:idColumn[:ownerColumn]]` (STORAGE_QUOTA_PROJECTS, --projects). */
function projectsFromText(text) {
  if (!text) return undefined
  if (text === 'standalone') return 'standalone'
  const [table, id, owner] = text.split(':')
  return { table, ...(id ? { id } : {}), ...(owner ? { owner } : {}) }
}

/**
 * Options from the environment: DATABASE_URL (or POSTGRES_URL), STORAGE_ROOT, STORAGE_QUOTA_MODE,
 * STORAGE_QUOTA_RETENTION_DAYS, STORAGE_QUOTA_PROJECTS, and STORAGE_BACKEND=s3 with
 * STORAGE_BUCKET and STORAGE_PREFIX.
 */

function optionsFromEnv(env = process.env) {
  const options = {}
  const url = env.DATABASE_URL || env.POSTGRES_URL
  if (url) options.databaseUrl = url
  if (env.STORAGE_ROOT) options.storageRoot = env.STORAGE_ROOT
  if (env.STORAGE_QUOTA_MODE) options.mode = env.STORAGE_QUOTA_MODE
  const projects = projectsFromText(env.STORAGE_QUOTA_PROJECTS)
  if (projects) options.projects = projects
  if (env.STORAGE_QUOTA_RETENTION_DAYS) options.historyRetentionDays = Number(env.STORAGE_QUOTA_RETENTION_DAYS)
  if (env.STORAGE_BACKEND === 's3') {
    options.storage = { backend: 's3', bucket: env.STORAGE_BUCKET ?? '' }
    if (env.STORAGE_PREFIX) options.storage.prefix = env.STORAGE_PREFIX
  } else if (env.STORAGE_BACKEND) {
    options.storage = { backend: env.STORAGE_BACKEND }
  }
  return options
}

module.exports = { StorageQuotaClient, optionsFromEnv, projectsFromText, parse }
