'use strict'

// The package's hand-written JS layer: validation (Zod), error classes, a default client from
// the environment. The native addon is loaded by the generated ./binding.js.

const { StorageQuotaClient, optionsFromEnv } = require('./lib/client.js')
const { StorageQuotaError, QuotaExceededError } = require('./lib/errors.js')
const schemas = require('./lib/schemas.js')
const { formatBytes } = require('./lib/format.js')

/** A client with its own pool. Options default to the environment (see README). */
function createClient(options) {
  return new StorageQuotaClient({ ...optionsFromEnv(), ...(options ?? {}) })
}

let defaultClient = null

/** The client behind the module-level functions, created from the environment on first use. */
function getDefaultClient() {
  if (defaultClient === null) defaultClient = createClient()
  return defaultClient
}

/** Closes the default client; the next module-level call creates a new one. */
async function closeDefaultClient() {
  const client = defaultClient
  defaultClient = null
  if (client) await client.close()
}

exports.createClient = createClient
exports.getDefaultClient = getDefaultClient
exports.closeDefaultClient = closeDefaultClient
exports.checkQuota = (userId, bytes) => getDefaultClient().checkQuota(userId, bytes)
exports.allocateProjectPath = (userId, projectId) => getDefaultClient().allocateProjectPath(userId, projectId)
exports.recordUpload = (userId, projectId, bytes, options) =>
  getDefaultClient().recordUpload(userId, projectId, bytes, options)
exports.projectPathFor = (userId, projectId) => getDefaultClient().projectPathFor(userId, projectId)
exports.validatePath = (userId, projectId, candidate) => getDefaultClient().validatePath(userId, projectId, candidate)
exports.diskUsage = (userId, projectId) => getDefaultClient().diskUsage(userId, projectId)
exports.migrate = () => getDefaultClient().migrate()
exports.rollback = (steps) => getDefaultClient().rollback(steps)
exports.migrationStatus = () => getDefaultClient().migrationStatus()
exports.formatBytes = formatBytes
exports.StorageQuotaClient = StorageQuotaClient
exports.StorageQuotaError = StorageQuotaError
exports.QuotaExceededError = QuotaExceededError
exports.UserIdSchema = schemas.UserIdSchema
exports.ProjectIdSchema = schemas.ProjectIdSchema
exports.BytesSchema = schemas.BytesSchema
exports.UploadIdSchema = schemas.UploadIdSchema
exports.RecordUploadOptionsSchema = schemas.RecordUploadOptionsSchema
exports.ClientOptionsSchema = schemas.ClientOptionsSchema
exports.StorageOptionsSchema = schemas.StorageOptionsSchema
exports.CandidatePathSchema = schemas.CandidatePathSchema
exports.ProjectLocationSchema = schemas.ProjectLocationSchema
exports.PathCheckSchema = schemas.PathCheckSchema
exports.DiskUsageSchema = schemas.DiskUsageSchema
exports.QuotaCheckSchema = schemas.QuotaCheckSchema
exports.RecordedUploadSchema = schemas.RecordedUploadSchema
exports.StorageBackendSchema = schemas.StorageBackendSchema
exports.ProjectStoragePathSchema = schemas.ProjectStoragePathSchema
exports.UserQuotaSchema = schemas.UserQuotaSchema
exports.SimulationJobStatusSchema = schemas.SimulationJobStatusSchema
exports.SimulationJobSchema = schemas.SimulationJobSchema
