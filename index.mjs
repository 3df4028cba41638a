// The package's ESM entry (`import`): the CommonJS module of index.js, and every one of its
// exports by name. Node's own CommonJS interop would read each export once at import time, and
// reading an exported Zod schema loads Zod (~9 MB): here each schema is a stand-in that loads
// it on first use instead, so an app that never touches a schema never loads Zod, whether it
// `require`s or `import`s the package. Same instance as `require('storage-quota')`: one
// default client, one set of error classes.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const cjs = require('./index.js')

export default cjs

export const {
  createClient,
  getDefaultClient,
  closeDefaultClient,
  checkQuota,
  allocateProjectPath,
  recordUpload,
  reserveUpload,
  commitUpload,
  cancelUpload,
  sweepExpiredReservations,
  pruneHistory,
  recordDeletion,
  registerProject,
  copyProject,
  removeProject,
  moveProjectStorage,
  listProjectFiles,
  deleteProjectFile,
  setQuotaLimit,
  getUsage,
  reconcile,
  projectPathFor,
  validatePath,
  diskUsage,
  migrate,
  rollback,
  migrationStatus,
  backfill,
  backfillStatus,
  prepareMigrations,
  migrationPreparation,
  formatBytes,
  quotaPercentage,
  quotaState,
  StorageQuotaClient,
  StorageQuotaError,
  QuotaExceededError,
} = cjs

/**
 * A stand-in for the Zod schema exported as `name`: every operation on it (reading a property,
 * calling a method, `instanceof`, `Object.keys`, …) is done on the schema itself, loaded on
 * first use.
 */
function lazySchema(name) {
  let schema = null
  const real = () => (schema ??= cjs[name])
  // A Proxy may report a non-configurable property (Zod's `_zod`) only if its target has it
  // too: such properties are copied onto the (otherwise empty) target as they are seen.
  const mirror = (target, key, descriptor) => {
    if (descriptor && !descriptor.configurable && !Reflect.getOwnPropertyDescriptor(target, key)) {
      Reflect.defineProperty(target, key, descriptor)
    }
    return descriptor
  }
  return new Proxy(Object.create(null), {
    get: (_target, key) => Reflect.get(real(), key),
    set: (_target, key, value) => Reflect.set(real(), key, value),
    has: (_target, key) => Reflect.has(real(), key),
    ownKeys: (target) => {
      const keys = Reflect.ownKeys(real())
      for (const key of keys) mirror(target, key, Reflect.getOwnPropertyDescriptor(real(), key))
      return keys
    },
    getOwnPropertyDescriptor: (target, key) => mirror(target, key, Reflect.getOwnPropertyDescriptor(real(), key)),
    defineProperty: (target, key, descriptor) => {
      const done = Reflect.defineProperty(real(), key, descriptor)
      if (done) mirror(target, key, Reflect.getOwnPropertyDescriptor(real(), key))
      return done
    },
    deleteProperty: (_target, key) => Reflect.deleteProperty(real(), key),
    getPrototypeOf: () => Reflect.getPrototypeOf(real()),
  })
}

export const BytesListSchema = lazySchema('BytesListSchema')
export const ReservationIdSchema = lazySchema('ReservationIdSchema')
export const ReserveUploadOptionsSchema = lazySchema('ReserveUploadOptionsSchema')
export const FileNameSchema = lazySchema('FileNameSchema')
export const MoveProjectOptionsSchema = lazySchema('MoveProjectOptionsSchema')
export const MovedProjectSchema = lazySchema('MovedProjectSchema')
export const ProjectFileSchema = lazySchema('ProjectFileSchema')
export const DeleteProjectFileOptionsSchema = lazySchema('DeleteProjectFileOptionsSchema')
export const RecordDeletionOptionsSchema = lazySchema('RecordDeletionOptionsSchema')
export const RegisterProjectOptionsSchema = lazySchema('RegisterProjectOptionsSchema')
export const RemoveProjectOptionsSchema = lazySchema('RemoveProjectOptionsSchema')
export const SetQuotaLimitOptionsSchema = lazySchema('SetQuotaLimitOptionsSchema')
export const GetUsageOptionsSchema = lazySchema('GetUsageOptionsSchema')
export const ReconcileOptionsSchema = lazySchema('ReconcileOptionsSchema')
export const StepsSchema = lazySchema('StepsSchema')
export const ModeSchema = lazySchema('ModeSchema')
export const ReservationSchema = lazySchema('ReservationSchema')
export const ReservationStatusSchema = lazySchema('ReservationStatusSchema')
export const SettledReservationSchema = lazySchema('SettledReservationSchema')
export const ReleasedSchema = lazySchema('ReleasedSchema')
export const QuotaStateSchema = lazySchema('QuotaStateSchema')
export const UsageSchema = lazySchema('UsageSchema')
export const UserIdSchema = lazySchema('UserIdSchema')
export const ProjectIdSchema = lazySchema('ProjectIdSchema')
export const BytesSchema = lazySchema('BytesSchema')
export const UploadIdSchema = lazySchema('UploadIdSchema')
export const RecordUploadOptionsSchema = lazySchema('RecordUploadOptionsSchema')
export const ClientOptionsSchema = lazySchema('ClientOptionsSchema')
export const StorageOptionsSchema = lazySchema('StorageOptionsSchema')
export const CandidatePathSchema = lazySchema('CandidatePathSchema')
export const ProjectLocationSchema = lazySchema('ProjectLocationSchema')
export const PathCheckSchema = lazySchema('PathCheckSchema')
export const DiskUsageSchema = lazySchema('DiskUsageSchema')
export const QuotaCheckSchema = lazySchema('QuotaCheckSchema')
export const RecordedUploadSchema = lazySchema('RecordedUploadSchema')
export const StorageBackendSchema = lazySchema('StorageBackendSchema')
export const ProjectStoragePathSchema = lazySchema('ProjectStoragePathSchema')
export const UserQuotaSchema = lazySchema('UserQuotaSchema')
export const SimulationJobStatusSchema = lazySchema('SimulationJobStatusSchema')
export const SimulationJobSchema = lazySchema('SimulationJobSchema')
export const ProjectsOptionSchema = lazySchema('ProjectsOptionSchema')
