'use strict'

const { z } = require('zod')
const { NativeClient } = require('../binding.js')
const { fromNative, fromZod } = require('./errors.js')
const S = require('./schemas.js')

function parse(schema, value, what) {
  const result = schema.safeParse(value)
  if (!result.success) throw fromZod(result.error, what)
  return result.data
}

const StepsSchema = z.number().int().min(1).max(1000)

/**
 * A storage-quota client with its own PostgreSQL pool. Every method validates its arguments
 * (rejecting with code INVALID_ARGUMENT before anything is sent) and rejects with a
 * StorageQuotaError carrying a stable `code`.
 */
class StorageQuotaClient {
  #native

  constructor(options = {}) {
    const parsed = parse(S.ClientOptionsSchema, options ?? {}, 'options')
    try {
      this.#native = new NativeClient(parsed)
    } catch (error) {
      throw fromNative(error)
    }
  }

  /** Whether `bytes` more fit in the user's quota. Resolves `{ allowed: false, … }` when not. */
  async checkQuota(userId, bytes) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const size = parse(S.BytesSchema, bytes, 'bytes')
    return this.#call((n) => n.checkQuota(user, size))
  }

  /** The project's storage path; creates the record and the directory on first call. */
  async allocateProjectPath(userId, projectId) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const project = parse(S.ProjectIdSchema, projectId, 'projectId')
    return this.#call((n) => n.allocateProjectPath(user, project))
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
    return this.#call((n) => n.validatePath(user, project, path))
  }

  /** The project's usage counted from its files on disk (links are never followed). */
  async diskUsage(userId, projectId) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const project = parse(S.ProjectIdSchema, projectId, 'projectId')
    return this.#call((n) => n.diskUsage(user, project))
  }

  /**
   * Charges an upload of `bytes` to `projectId`. Rejects with QUOTA_EXCEEDED when it does not
   * fit; with the same `uploadId` twice, the upload counts once.
   */
  async recordUpload(userId, projectId, bytes, options = {}) {
    const user = parse(S.UserIdSchema, userId, 'userId')
    const project = parse(S.ProjectIdSchema, projectId, 'projectId')
    const size = parse(S.BytesSchema, bytes, 'bytes')
    const opts = parse(S.RecordUploadOptionsSchema, options ?? {}, 'options')
    return this.#call((n) => n.recordUpload(user, project, size, opts))
  }

  /** Applies pending migrations. Resolves to `{ applied: number[] }` (versions applied now). */
  async migrate() {
    const applied = await this.#call((n) => n.migrate())
    return { applied }
  }

  /** Reverts the `steps` (default 1) most recent migrations. Resolves to `{ reverted }`. */
  async rollback(steps = 1) {
    const count = parse(StepsSchema, steps, 'steps')
    const reverted = await this.#call((n) => n.rollback(count))
    return { reverted }
  }

  /** Applied and pending migrations. */
  async migrationStatus() {
    return this.#call((n) => n.migrationStatus())
  }

  /** Calls in flight finish; later calls reject with CLIENT_CLOSED. */
  async close() {
    this.#native.close()
  }

  async #call(run) {
    try {
      return await run(this.#native)
    } catch (error) {
      throw fromNative(error)
    }
  }
}

/**
 * Options from the environment: DATABASE_URL (or POSTGRES_URL), STORAGE_ROOT, and
 * STORAGE_BACKEND=s3 with STORAGE_BUCKET and STORAGE_PREFIX.
 */
function optionsFromEnv(env = process.env) {
  const options = {}
  const url = env.DATABASE_URL || env.POSTGRES_URL
  if (url) options.databaseUrl = url
  if (env.STORAGE_ROOT) options.storageRoot = env.STORAGE_ROOT
  if (env.STORAGE_BACKEND === 's3') {
    options.storage = { backend: 's3', bucket: env.STORAGE_BUCKET ?? '' }
    if (env.STORAGE_PREFIX) options.storage.prefix = env.STORAGE_PREFIX
  } else if (env.STORAGE_BACKEND) {
    options.storage = { backend: env.STORAGE_BACKEND }
  }
  return options
}

module.exports = { StorageQuotaClient, optionsFromEnv }
