'use strict'

// The package's hand-written JS layer: validation (Zod), error classes, a default client from
// the environment, pure helpers for the UI. The native addon is loaded by ./binding.js.

const { StorageQuotaClient, optionsFromEnv, parse } = require('./lib/client.js')
const { StorageQuotaError, QuotaExceededError } = require('./lib/errors.js')
const args = require('./lib/args.js')

// The Zod schemas, loaded on first use: Zod alone adds ~12 MB to a process, and calls validate
// their arguments with lib/args.js instead. (An ESM `import` of this file reads every named
// export, so it loads them at once; `require`, which Next.js uses for serverExternalPackages,
// does not.)
let zodSchemas = null
const schemas = new Proxy(
  {},
  {
    get(_, name) {
      zodSchemas ??= require('./lib/schemas.js')
      return zodSchemas[name]
    },
  },
)
const { formatBytes, quotaPercentage, quotaState } = require('./lib/format.js')

/** A client with its own pool. Options default to the environment (see README). */
function createClient(options) {
  // Validate before merging: spreading a hostile object (throwing getter, Proxy) would throw
  // something other than INVALID_ARGUMENT.
  const given = parse(args.ClientOptionsSchema, options ?? {}, 'options')
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
exports.prepareMigrations = (...args) => getDefaultClient().prepareMigrations(...args)
exports.migrationPreparation = (...args) => getDefaultClient().migrationPreparation(...args)

exports.formatBytes = formatBytes
exports.quotaPercentage = quotaPercentage
exports.quotaState = quotaState
exports.StorageQuotaClient = StorageQuotaClient
exports.StorageQuotaError = StorageQuotaError
exports.QuotaExceededError = QuotaExceededError
Object.defineProperty(exports, 'BytesListSchema', { enumerable: true, get: function () { return schemas.BytesListSchema } })
Object.defineProperty(exports, 'ReservationIdSchema', { enumerable: true, get: function () { return schemas.ReservationIdSchema } })
Object.defineProperty(exports, 'ReserveUploadOptionsSchema', { enumerable: true, get: function () { return schemas.ReserveUploadOptionsSchema } })
Object.defineProperty(exports, 'FileNameSchema', { enumerable: true, get: function () { return schemas.FileNameSchema } })
Object.defineProperty(exports, 'MoveProjectOptionsSchema', { enumerable: true, get: function () { return schemas.MoveProjectOptionsSchema } })
Object.defineProperty(exports, 'MovedProjectSchema', { enumerable: true, get: function () { return schemas.MovedProjectSchema } })
Object.defineProperty(exports, 'ProjectFileSchema', { enumerable: true, get: function () { return schemas.ProjectFileSchema } })
Object.defineProperty(exports, 'DeleteProjectFileOptionsSchema', { enumerable: true, get: function () { return schemas.DeleteProjectFileOptionsSchema } })
Object.defineProperty(exports, 'RecordDeletionOptionsSchema', { enumerable: true, get: function () { return schemas.RecordDeletionOptionsSchema } })
Object.defineProperty(exports, 'RegisterProjectOptionsSchema', { enumerable: true, get: function () { return schemas.RegisterProjectOptionsSchema } })
Object.defineProperty(exports, 'RemoveProjectOptionsSchema', { enumerable: true, get: function () { return schemas.RemoveProjectOptionsSchema } })
Object.defineProperty(exports, 'SetQuotaLimitOptionsSchema', { enumerable: true, get: function () { return schemas.SetQuotaLimitOptionsSchema } })
Object.defineProperty(exports, 'GetUsageOptionsSchema', { enumerable: true, get: function () { return schemas.GetUsageOptionsSchema } })
Object.defineProperty(exports, 'ReconcileOptionsSchema', { enumerable: true, get: function () { return schemas.ReconcileOptionsSchema } })
Object.defineProperty(exports, 'StepsSchema', { enumerable: true, get: function () { return schemas.StepsSchema } })
Object.defineProperty(exports, 'ModeSchema', { enumerable: true, get: function () { return schemas.ModeSchema } })
Object.defineProperty(exports, 'ReservationSchema', { enumerable: true, get: function () { return schemas.ReservationSchema } })
Object.defineProperty(exports, 'ReservationStatusSchema', { enumerable: true, get: function () { return schemas.ReservationStatusSchema } })
Object.defineProperty(exports, 'SettledReservationSchema', { enumerable: true, get: function () { return schemas.SettledReservationSchema } })
Object.defineProperty(exports, 'ReleasedSchema', { enumerable: true, get: function () { return schemas.ReleasedSchema } })
Object.defineProperty(exports, 'QuotaStateSchema', { enumerable: true, get: function () { return schemas.QuotaStateSchema } })
Object.defineProperty(exports, 'UsageSchema', { enumerable: true, get: function () { return schemas.UsageSchema } })
Object.defineProperty(exports, 'UserIdSchema', { enumerable: true, get: function () { return schemas.UserIdSchema } })
Object.defineProperty(exports, 'ProjectIdSchema', { enumerable: true, get: function () { return schemas.ProjectIdSchema } })
Object.defineProperty(exports, 'BytesSchema', { enumerable: true, get: function () { return schemas.BytesSchema } })
Object.defineProperty(exports, 'UploadIdSchema', { enumerable: true, get: function () { return schemas.UploadIdSchema } })
Object.defineProperty(exports, 'RecordUploadOptionsSchema', { enumerable: true, get: function () { return schemas.RecordUploadOptionsSchema } })
Object.defineProperty(exports, 'ClientOptionsSchema', { enumerable: true, get: function () { return schemas.ClientOptionsSchema } })
Object.defineProperty(exports, 'StorageOptionsSchema', { enumerable: true, get: function () { return schemas.StorageOptionsSchema } })
Object.defineProperty(exports, 'CandidatePathSchema', { enumerable: true, get: function () { return schemas.CandidatePathSchema } })
Object.defineProperty(exports, 'ProjectLocationSchema', { enumerable: true, get: function () { return schemas.ProjectLocationSchema } })
Object.defineProperty(exports, 'PathCheckSchema', { enumerable: true, get: function () { return schemas.PathCheckSchema } })
Object.defineProperty(exports, 'DiskUsageSchema', { enumerable: true, get: function () { return schemas.DiskUsageSchema } })
Object.defineProperty(exports, 'QuotaCheckSchema', { enumerable: true, get: function () { return schemas.QuotaCheckSchema } })
Object.defineProperty(exports, 'RecordedUploadSchema', { enumerable: true, get: function () { return schemas.RecordedUploadSchema } })
Object.defineProperty(exports, 'StorageBackendSchema', { enumerable: true, get: function () { return schemas.StorageBackendSchema } })
Object.defineProperty(exports, 'ProjectStoragePathSchema', { enumerable: true, get: function () { return schemas.ProjectStoragePathSchema } })
Object.defineProperty(exports, 'UserQuotaSchema', { enumerable: true, get: function () { return schemas.UserQuotaSchema } })
Object.defineProperty(exports, 'SimulationJobStatusSchema', { enumerable: true, get: function () { return schemas.SimulationJobStatusSchema } })
Object.defineProperty(exports, 'SimulationJobSchema', { enumerable: true, get: function () { return schemas.SimulationJobSchema } })
Object.defineProperty(exports, 'ProjectsOptionSchema', { enumerable: true, get: function () { return schemas.ProjectsOptionSchema } })
