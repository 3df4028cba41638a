'use strict'

// The package's hand-written JS layer: validation (Zod), error classes, a default client from
// the environment, pure helpers for the UI. The native addon is loaded by ./binding.js.

const { StorageQuotaClient, optionsFromEnv, parse } = require('./lib/client.js')
const { StorageQuotaError, QuotaExceededError } = require('./lib/errors.js')
const schemas = require('./lib/schemas.js')
const { formatBytes, quotaPercentage, quotaState } = require('./lib/format.js')

/** A client with its own pool. Options default to the environment (see README). */
function createClient(options) {
  // Validate before merging: spreading a hostile object (throwing getter, Proxy) would throw
  // something other than INVALID_ARGUMENT.
  const given = parse(schemas.ClientOptionsSchema, options ?? {}, 'options')
  return new StorageQuotaClient({ ...optionsFromEnv(), ...given })
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

// Module-level forms of every client method, on the default client. Written out one by one
// so Node's ESM loader sees each named export of this CommonJS file.
exports.checkQuota = (...args) => getDefaultClient().checkQuota(...args)
exports.allocateProjectPath = (...args) => getDefaultClient().allocateProjectPath(...args)
exports.recordUpload = (...args) => getDefaultClient().recordUpload(...args)
exports.reserveUpload = (...args) => getDefaultClient().reserveUpload(...args)
exports.commitUpload = (...args) => getDefaultClient().commitUpload(...args)
exports.cancelUpload = (...args) => getDefaultClient().cancelUpload(...args)
exports.sweepExpiredReservations = (...args) => getDefaultClient().sweepExpiredReservations(...args)
exports.pruneHistory = (...args) => getDefaultClient().pruneHistory(...args)
exports.recordDeletion = (...args) => getDefaultClient().recordDeletion(...args)
exports.registerProject = (...args) => getDefaultClient().registerProject(...args)
exports.copyProject = (...args) => getDefaultClient().copyProject(...args)
exports.removeProject = (...args) => getDefaultClient().removeProject(...args)
exports.moveProjectStorage = (...args) => getDefaultClient().moveProjectStorage(...args)
exports.listProjectFiles = (...args) => getDefaultClient().listProjectFiles(...args)
exports.deleteProjectFile = (...args) => getDefaultClient().deleteProjectFile(...args)
exports.setQuotaLimit = (...args) => getDefaultClient().setQuotaLimit(...args)
exports.getUsage = (...args) => getDefaultClient().getUsage(...args)
exports.reconcile = (...args) => getDefaultClient().reconcile(...args)
exports.projectPathFor = (...args) => getDefaultClient().projectPathFor(...args)
exports.validatePath = (...args) => getDefaultClient().validatePath(...args)
exports.diskUsage = (...args) => getDefaultClient().diskUsage(...args)
exports.migrate = (...args) => getDefaultClient().migrate(...args)
exports.rollback = (...args) => getDefaultClient().rollback(...args)
exports.migrationStatus = (...args) => getDefaultClient().migrationStatus(...args)
exports.backfill = (...args) => getDefaultClient().backfill(...args)
exports.backfillStatus = (...args) => getDefaultClient().backfillStatus(...args)

exports.formatBytes = formatBytes
exports.quotaPercentage = quotaPercentage
exports.quotaState = quotaState
exports.StorageQuotaClient = StorageQuotaClient
exports.StorageQuotaError = StorageQuotaError
exports.QuotaExceededError = QuotaExceededError
exports.BytesListSchema = schemas.BytesListSchema
exports.ReservationIdSchema = schemas.ReservationIdSchema
exports.ReserveUploadOptionsSchema = schemas.ReserveUploadOptionsSchema
exports.FileNameSchema = schemas.FileNameSchema
exports.MoveProjectOptionsSchema = schemas.MoveProjectOptionsSchema
exports.MovedProjectSchema = schemas.MovedProjectSchema
exports.ProjectFileSchema = schemas.ProjectFileSchema
exports.DeleteProjectFileOptionsSchema = schemas.DeleteProjectFileOptionsSchema
exports.RecordDeletionOptionsSchema = schemas.RecordDeletionOptionsSchema
exports.RegisterProjectOptionsSchema = schemas.RegisterProjectOptionsSchema
exports.RemoveProjectOptionsSchema = schemas.RemoveProjectOptionsSchema
exports.SetQuotaLimitOptionsSchema = schemas.SetQuotaLimitOptionsSchema
exports.GetUsageOptionsSchema = schemas.GetUsageOptionsSchema
exports.ReconcileOptionsSchema = schemas.ReconcileOptionsSchema
exports.StepsSchema = schemas.StepsSchema
exports.ModeSchema = schemas.ModeSchema
exports.ReservationSchema = schemas.ReservationSchema
exports.ReservationStatusSchema = schemas.ReservationStatusSchema
exports.SettledReservationSchema = schemas.SettledReservationSchema
exports.ReleasedSchema = schemas.ReleasedSchema
exports.QuotaStateSchema = schemas.QuotaStateSchema
exports.UsageSchema = schemas.UsageSchema
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
