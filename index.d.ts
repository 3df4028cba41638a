// Typings of the hand-written JS layer. Result shapes come from the generated binding.d.ts
// (built from the Rust `///` docs), so they cannot drift from the addon.
import type { z } from 'zod'
import type {
  BackfillProgress,
  MigrationPreparation,
  ClientOptions as NativeClientOptions,
  MigrateResult,
  SkippedOwner,
  CopiedProject,
  DiskUsage,
  ProjectLocation,
  MigrationInfo,
  MigrationStatus,
  MovedProject,
  ProjectDrift,
  ProjectFile,
  ProjectStoragePath,
  ProjectUsage,
  PrunedHistory,
  QuotaCheck,
  ReconcileReport,
  RecordedUpload,
  RecordUploadOptions,
  RegisteredProject,
  Released,
  Reservation,
  SettledReservation,
  Usage,
  UserDrift,
} from './binding'

/**
 * The answer of `validatePath`: inside the project directory (with where), or refused (with
 * why). After `if (!check.inside) return`, `check.path` is a `string`.
 */
export type PathCheck =
  | { inside: true; path: string; relativePath: string }
  | { inside: false; reason: string }

/** `getUsage(userId, { projects: true })`: the usage with each project's bytes. */
export type UsageWithProjects = Usage & { projects: ProjectUsage[] }

export type {
  ProjectFile,
  BackfillProgress,
  MigrationPreparation,
  MigrateResult,
  SkippedOwner,
  CopiedProject,
  DiskUsage,
  ProjectLocation,
  MigrationInfo,
  MigrationStatus,
  MovedProject,
  ProjectDrift,
  ProjectStoragePath,
  ProjectUsage,
  PrunedHistory,
  QuotaCheck,
  ReconcileReport,
  RecordedUpload,
  RecordUploadOptions,
  RegisteredProject,
  Released,
  Reservation,
  SettledReservation,
  Usage,
  UserDrift,
}

export type QuotaMode = 'enforce' | 'shadow' | 'off'

export interface BackfillOptions {
  /** Projects per committed batch (1 to 100,000; default 10,000). */
  batchSize?: number
  /** Called after every batch with where the backfill is. */
  onProgress?: (progress: BackfillProgress) => void
  /** Stops between batches; `backfill()` then resolves with `done: false`. Run it again to resume. */
  signal?: AbortSignal
}

export interface PrepareMigrationsOptions {
  /** Rows per committed batch of a fill (1 to 100,000; default 10,000). */
  batchSize?: number
  /** Called after every step with where the preparation is. */
  onProgress?: (preparation: MigrationPreparation) => void
  /** Stops between steps; `prepareMigrations()` then resolves with `done: false`. Run it again to resume. */
  signal?: AbortSignal
}

export interface RollbackOptions {
  /** Let 0001's rollback drop recorded usage and limits (back up first; see docs/migrations.md). */
  discardUsage?: boolean
}
export type QuotaState = 'normal' | 'nearing' | 'critical' | 'exceeded'

/** Structured log events: `quota_refused`, `shadow_refusal`, `drift_found`, `slow_call`, `limit_changed`. */
export type LogEvent = 'quota_refused' | 'shadow_refusal' | 'drift_found' | 'slow_call' | 'limit_changed' | 'backfill_pending'
export type Logger =
  | ((event: LogEvent, fields: Record<string, unknown>) => void)
  | { info?: (entry: Record<string, unknown>) => void; warn?: (entry: Record<string, unknown>) => void }

export interface ClientOptions extends Omit<NativeClientOptions, 'storage' | 'projects'> {
  /** Where project paths point. Default `{ backend: 'local' }` (directories under `storageRoot`). */
  storage?: StorageOptions
  /**
   * Where the app's projects are: its table with the id and owner columns (default
   * `{ table: 'projects', id: 'id', owner: 'user_id' }`), or `'standalone'` for the package's own
   * registry. Default: `STORAGE_QUOTA_PROJECTS` (`standalone` or `table:id:owner`).
   */
  projects?: ProjectsOption
  /** Where log events go: a function or an object with `info`/`warn` (each gets every event), or `false`. Default: warnings as JSON lines on stderr. */
  logger?: Logger | false
  /** What the default stderr logger writes: `warn` (default: `slow_call`, `drift_found`, `shadow_refusal`) or `info` (also `quota_refused`, `limit_changed`). Default: `STORAGE_QUOTA_LOG`, then `warn`. */
  logLevel?: 'warn' | 'info'
  /** Calls slower than this many ms are logged as `slow_call`. Default 250. */
  slowCallMs?: number
}

/** The app's project table (`name` or `schema.name`), its id column (default `id`; uuid, text, varchar, integer or bigint) and owner column (default `user_id`; text, varchar or uuid — a user id or an organization id). */
export type ProjectsOption = 'standalone' | { table: string; id?: string; owner?: string }

/**
 * Where project paths point: directories under `storageRoot` (the default), or keys under
 * `s3://{bucket}/{prefix}/`, whose allocation writes nothing anywhere.
 */
export type StorageOptions =
  | { backend: 'local' }
  | {
      backend: 's3'
      bucket: string
      prefix?: string
      /** `http(s)://host:port` of an S3-compatible store (path-style). Default `AWS_ENDPOINT_URL`, else AWS. */
      endpoint?: string
      /** Default `AWS_REGION`. */
      region?: string
      /** Default `AWS_ACCESS_KEY_ID`. */
      accessKeyId?: string
      /** Default `AWS_SECRET_ACCESS_KEY`. Never logged. */
      secretAccessKey?: string
      /** Default `AWS_SESSION_TOKEN`. Never logged. */
      sessionToken?: string
    }

/** Every code a StorageQuotaError can carry. Codes are stable across versions. */
export type StorageQuotaErrorCode =
  | 'INVALID_ARGUMENT'
  | 'QUOTA_EXCEEDED'
  | 'NOT_FOUND'
  | 'FORBIDDEN'
  | 'CONFLICT'
  | 'RESERVATION_EXPIRED'
  | 'MIGRATION_REQUIRED'
  | 'MIGRATION_FAILED'
  | 'DB_UNAVAILABLE'
  | 'DB_TIMEOUT'
  | 'DB_ERROR'
  | 'STORAGE_ERROR'
  | 'UNSAFE_PATH'
  | 'CLIENT_CLOSED'
  | 'INTERNAL'

/**
 * Why a call is a CONFLICT: `KEY_REUSED` (an idempotency key used before for a different
 * request), `ALREADY_SETTLED` (a reservation already committed, cancelled or expired),
 * `TARGET_NOT_EMPTY` (a copy into a project that already holds files), `MISMATCH` (an upload
 * recorded for another project or size; a presigned upload committed before its PUT),
 * `UPLOAD_IN_FLIGHT` (a project moved while an upload to it holds a reservation),
 * `FILE_EXISTS` (a presigned upload to a name that already holds a file).
 */
export type ConflictReason = 'KEY_REUSED' | 'ALREADY_SETTLED' | 'TARGET_NOT_EMPTY' | 'MISMATCH' | 'UPLOAD_IN_FLIGHT' | 'FILE_EXISTS'

/** The one error type of the package: match on `code`. */
export declare class StorageQuotaError extends Error {
  readonly code: StorageQuotaErrorCode
  /** For INVALID_ARGUMENT from validation: which argument, and what was wrong. */
  readonly issues?: Array<{ path: string; message: string }>
  /** For CONFLICT: how the request collides with an earlier one. */
  readonly reason?: ConflictReason
  /**
   * PostgreSQL's SQLSTATE. DB_ERROR: always. DB_TIMEOUT: when PostgreSQL cancelled the statement
   * ('57014' statement_timeout, '55P03' lock_timeout); none when no pooled connection became
   * free in time. DB_UNAVAILABLE: when the server said why ('57P01' shut down or terminated the
   * connection, '53300' too many connections, '28P01' bad password, '3D000' no such database);
   * none when nothing answered.
   */
  readonly sqlState?: string
  /** For DB_ERROR, when PostgreSQL names them. */
  readonly constraint?: string
  readonly table?: string
  readonly column?: string
  readonly detail?: string
  constructor(code: StorageQuotaErrorCode, message: string, details?: Record<string, unknown>)
}

/** An upload that does not fit. The message is written for people. */
export declare class QuotaExceededError extends StorageQuotaError {
  readonly code: 'QUOTA_EXCEEDED'
  readonly requestedBytes: number
  readonly usedBytes: number
  readonly reservedBytes: number
  readonly limitBytes: number
  readonly remainingBytes: number
}

/** A row of `user_quotas`. */
export interface UserQuota {
  id: string
  userId: string
  limitBytes: number
  usedBytes: number
  reservedBytes: number
  createdAt: Date
  updatedAt: Date
}

export type SimulationJobStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled'

/** A row of `simulation_jobs` (phase 2). */
export interface SimulationJob {
  id: string
  projectId: string
  userId: string
  status: SimulationJobStatus
  parameters: Record<string, unknown>
  outputPath: string | null
  error: string | null
  createdAt: Date
  updatedAt: Date
  startedAt: Date | null
  finishedAt: Date | null
}

export interface ReserveUploadOptions {
  /** How long the bytes are held, 1 s to 7 days. Default: the client's `reservationTtlMs` (1 h). */
  ttlMs?: number
  /** A UUID you choose: a retry with the same id after a lost reply holds the bytes once. */
  reservationId?: string
  /** s3 backend: also answer with `uploadUrl`, a presigned PUT of `fileName` expiring with the reservation. */
  presign?: boolean
  /** The file the presigned URL writes, relative to the project (`renders/a.png`). Required with `presign`. */
  fileName?: string
}
export interface MoveProjectOptions {
  /** The backend to move the project's files to. */
  to: 'local' | 's3'
}
export interface RecordDeletionOptions {
  /** Release exactly the bytes this upload recorded, once. */
  uploadId?: string
  /** Idempotency key for a deletion given in bytes. */
  deletionId?: string
}
export interface SetQuotaLimitOptions {
  changedBy?: string
  reason?: string
}

export declare class StorageQuotaClient {
  constructor(options?: ClientOptions)
  /**
   * Whether `bytes` more fit — or, for a list of sizes, whether all do, `missingBytes`, and
   * `fits[i]` for each in order. Resolves `{ allowed: false, … }` rather than rejecting.
   */
  checkQuota(userId: string, bytes: number | number[]): Promise<QuotaCheck>
  /** `{storageRoot}/{userId}/{projectId}/`, created on first call. NOT_FOUND / FORBIDDEN for unknown or foreign projects. */
  allocateProjectPath(userId: string, projectId: string): Promise<ProjectStoragePath>
  /** Where the project lives (or would): `{ backend, key, path }`. Pure: no database, no disk. */
  projectPathFor(userId: string, projectId: string): ProjectLocation
  /** Whether `candidate` (relative to the project directory, or absolute) lies inside it. */
  validatePath(userId: string, projectId: string, candidate: string): Promise<PathCheck>
  /** The project's usage counted from its files on disk; symlinks are never followed. */
  diskUsage(userId: string, projectId: string): Promise<DiskUsage>
  /** Charges an upload; rejects with a QuotaExceededError when it does not fit. `replacesBytes` charges the net change. */
  recordUpload(userId: string, projectId: string, bytes: number, options?: RecordUploadOptions): Promise<RecordedUpload>
  /** Holds bytes for an upload whose bytes arrive later; QUOTA_EXCEEDED when they do not fit. */
  reserveUpload(userId: string, projectId: string, bytes: number, options?: ReserveUploadOptions): Promise<Reservation>
  /**
   * Turns the user's reservation into usage (`actualBytes`, default the bytes reserved); a retry
   * is `duplicate: true`. A presigned reservation is charged the object's real size instead (a
   * `HEAD`); one that does not fit is `QUOTA_EXCEEDED` and its object deleted.
   */
  commitUpload(userId: string, reservationId: string, actualBytes?: number): Promise<SettledReservation>
  /** Gives the user's reservation's bytes back; a retry is `duplicate: true`. CONFLICT (ALREADY_SETTLED) once committed. */
  cancelUpload(userId: string, reservationId: string): Promise<SettledReservation>
  /** Gives back every expired reservation now. */
  sweepExpiredReservations(): Promise<{ users: number }>
  /** Deletes settled reservations and folds ledger entries older than `historyRetentionDays` (default 90); sums unchanged. */
  pruneHistory(): Promise<PrunedHistory>
  /** Releases a deleted file's bytes (works over quota, never below zero). */
  recordDeletion(userId: string, projectId: string, bytes?: number, options?: RecordDeletionOptions): Promise<Released>
  /** A new project: quota check, storage path, initial size counted. */
  registerProject(userId: string, projectId: string, options?: { sizeBytes?: number }): Promise<RegisteredProject>
  /**
   * Copies a project's files into a new, empty project of the same user and counts them; links
   * are skipped (`skipped`). Retries and concurrent calls for one new project answer
   * `duplicate: true`, or `CONFLICT` `KEY_REUSED` for another source.
   */
  copyProject(userId: string, sourceProjectId: string, newProjectId: string): Promise<CopiedProject>
  /** Releases a project's bytes, cancels its reservations and (by default) deletes its files. */
  removeProject(userId: string, projectId: string, options?: { deleteFiles?: boolean }): Promise<Released>
  /** The project's files with their sizes, from its directory or its bucket prefix. */
  listProjectFiles(userId: string, projectId: string): Promise<ProjectFile[]>
  /** Deletes one file (on disk or in the bucket) and gives back its measured bytes. */
  deleteProjectFile(userId: string, projectId: string, fileName: string, options?: { deletionId?: string }): Promise<Released>
  /** Moves a project's files to the other backend and flips its record; resumable; usage unchanged. */
  moveProjectStorage(userId: string, projectId: string, options: MoveProjectOptions): Promise<MovedProject>
  /** Sets a user's limit; recorded in quota_limit_changes with who and why. */
  setQuotaLimit(userId: string, limitBytes: number, options?: SetQuotaLimitOptions): Promise<Usage>
  /** Usage for the UI; `{ projects: true }` adds each project's bytes. */
  getUsage(userId: string, options: { projects: true }): Promise<UsageWithProjects>
  getUsage(userId: string, options?: { projects?: boolean }): Promise<Usage>
  /** Recomputes usage from the ledger; reports drift, fixes counters with `{ fix: true }`. */
  reconcile(userId?: string, options?: { fix?: boolean; disk?: boolean }): Promise<ReconcileReport>
  reconcile(options: { fix?: boolean; disk?: boolean }): Promise<ReconcileReport>
  /** Applies pending schema migrations; backfills an app of at most 10,000 projects too. */
  migrate(): Promise<MigrateResult>
  /** Runs the backfill of existing projects to its end (resumable), in committed batches. */
  backfill(options?: BackfillOptions): Promise<BackfillProgress>
  /** Where the backfill is. */
  backfillStatus(): Promise<BackfillProgress>
  /** Prepares big tables for pending migrations (upgrades from 0.1.0), in committed steps; resumable. */
  prepareMigrations(options?: PrepareMigrationsOptions): Promise<MigrationPreparation>
  /** Where that preparation is. */
  migrationPreparation(): Promise<MigrationPreparation>
  /** Reverts the `steps` (default 1) most recent migrations. */
  rollback(steps?: number, options?: RollbackOptions): Promise<{ reverted: number[] }>
  migrationStatus(): Promise<MigrationStatus>
  /**
   * Every call made before close() finishes, and close() resolves once they have settled; calls
   * made after it reject with CLIENT_CLOSED. The pool's connections close then.
   */
  close(): Promise<void>
}

/** A client with its own pool; unset options come from DATABASE_URL / POSTGRES_URL and STORAGE_ROOT. */
export declare function createClient(options?: ClientOptions): StorageQuotaClient
/** The client behind the module-level functions, created from the environment on first use. */
export declare function getDefaultClient(): StorageQuotaClient
export declare function closeDefaultClient(): Promise<void>

export declare function checkQuota(userId: string, bytes: number | number[]): Promise<QuotaCheck>
export declare function allocateProjectPath(userId: string, projectId: string): Promise<ProjectStoragePath>
export declare function recordUpload(
  userId: string,
  projectId: string,
  bytes: number,
  options?: RecordUploadOptions,
): Promise<RecordedUpload>
export declare function reserveUpload(userId: string, projectId: string, bytes: number, options?: ReserveUploadOptions): Promise<Reservation>
export declare function commitUpload(userId: string, reservationId: string, actualBytes?: number): Promise<SettledReservation>
export declare function cancelUpload(userId: string, reservationId: string): Promise<SettledReservation>
export declare function sweepExpiredReservations(): Promise<{ users: number }>
export declare function pruneHistory(): Promise<PrunedHistory>
export declare function recordDeletion(userId: string, projectId: string, bytes?: number, options?: RecordDeletionOptions): Promise<Released>
export declare function registerProject(userId: string, projectId: string, options?: { sizeBytes?: number }): Promise<RegisteredProject>
export declare function copyProject(userId: string, sourceProjectId: string, newProjectId: string): Promise<CopiedProject>
export declare function removeProject(userId: string, projectId: string, options?: { deleteFiles?: boolean }): Promise<Released>
export declare function listProjectFiles(userId: string, projectId: string): Promise<ProjectFile[]>
export declare function deleteProjectFile(userId: string, projectId: string, fileName: string, options?: { deletionId?: string }): Promise<Released>
export declare function moveProjectStorage(userId: string, projectId: string, options: MoveProjectOptions): Promise<MovedProject>
export declare function setQuotaLimit(userId: string, limitBytes: number, options?: SetQuotaLimitOptions): Promise<Usage>
export declare function getUsage(userId: string, options: { projects: true }): Promise<UsageWithProjects>
export declare function getUsage(userId: string, options?: { projects?: boolean }): Promise<Usage>
export declare function reconcile(userId?: string, options?: { fix?: boolean; disk?: boolean }): Promise<ReconcileReport>
export declare function reconcile(options: { fix?: boolean; disk?: boolean }): Promise<ReconcileReport>
export declare function projectPathFor(userId: string, projectId: string): ProjectLocation
export declare function validatePath(userId: string, projectId: string, candidate: string): Promise<PathCheck>
export declare function diskUsage(userId: string, projectId: string): Promise<DiskUsage>
export declare function migrate(): Promise<MigrateResult>
export declare function backfill(options?: BackfillOptions): Promise<BackfillProgress>
export declare function backfillStatus(): Promise<BackfillProgress>
export declare function prepareMigrations(options?: PrepareMigrationsOptions): Promise<MigrationPreparation>
export declare function migrationPreparation(): Promise<MigrationPreparation>
export declare function rollback(steps?: number, options?: RollbackOptions): Promise<{ reverted: number[] }>
export declare function migrationStatus(): Promise<MigrationStatus>

/** `512 B`, `12.5 MB`, `1 GB`: binary multiples (1 KB = 1024 bytes). Pure: fine in client components. */
export declare function formatBytes(bytes: number): string
/** `used / limit` in percent, two decimals, as the addon computes `percentUsed`. */
export declare function quotaPercentage(usedBytes: number, limitBytes: number): number
/** `normal` < 75 ≤ `nearing` < 90 ≤ `critical` < 100 ≤ `exceeded`. */
export declare function quotaState(percentUsed: number): QuotaState

export declare const BytesListSchema: z.ZodType<number[]>
export declare const ReservationIdSchema: z.ZodType<string>
export declare const ReserveUploadOptionsSchema: z.ZodType<ReserveUploadOptions>
export declare const FileNameSchema: z.ZodType<string>
export declare const MoveProjectOptionsSchema: z.ZodType<MoveProjectOptions>
export declare const MovedProjectSchema: z.ZodType<MovedProject>
export declare const ProjectFileSchema: z.ZodType<ProjectFile>
export declare const DeleteProjectFileOptionsSchema: z.ZodType<{ deletionId?: string }>
export declare const RecordDeletionOptionsSchema: z.ZodType<RecordDeletionOptions>
export declare const RegisterProjectOptionsSchema: z.ZodType<{ sizeBytes?: number }>
export declare const RemoveProjectOptionsSchema: z.ZodType<{ deleteFiles?: boolean }>
export declare const SetQuotaLimitOptionsSchema: z.ZodType<SetQuotaLimitOptions>
export declare const GetUsageOptionsSchema: z.ZodType<{ projects?: boolean }>
export declare const ReconcileOptionsSchema: z.ZodType<{ fix?: boolean; disk?: boolean }>
export declare const StepsSchema: z.ZodType<number>
export declare const ModeSchema: z.ZodType<QuotaMode>
export declare const ReservationSchema: z.ZodType<Reservation>
export declare const ReservationStatusSchema: z.ZodType<'committed' | 'cancelled' | 'expired'>
export declare const SettledReservationSchema: z.ZodType<SettledReservation>
export declare const ReleasedSchema: z.ZodType<Released>
export declare const PrunedHistorySchema: z.ZodType<PrunedHistory>
export declare const QuotaStateSchema: z.ZodType<QuotaState>
export declare const UsageSchema: z.ZodType<Usage>
export declare const UserIdSchema: z.ZodType<string>
export declare const ProjectIdSchema: z.ZodType<string>
export declare const BytesSchema: z.ZodType<number>
export declare const UploadIdSchema: z.ZodType<string>
export declare const RecordUploadOptionsSchema: z.ZodType<RecordUploadOptions>
export declare const ClientOptionsSchema: z.ZodType<ClientOptions>
export declare const ProjectsOptionSchema: z.ZodType<ProjectsOption>
export declare const StorageOptionsSchema: z.ZodType<StorageOptions>
export declare const CandidatePathSchema: z.ZodType<string>
export declare const ProjectLocationSchema: z.ZodType<ProjectLocation>
export declare const PathCheckSchema: z.ZodType<PathCheck>
export declare const DiskUsageSchema: z.ZodType<DiskUsage>
export declare const QuotaCheckSchema: z.ZodType<QuotaCheck>
export declare const RecordedUploadSchema: z.ZodType<RecordedUpload>
export declare const StorageBackendSchema: z.ZodType<'local' | 's3'>
export declare const ProjectStoragePathSchema: z.ZodType<ProjectStoragePath>
export declare const UserQuotaSchema: z.ZodType<UserQuota>
export declare const SimulationJobStatusSchema: z.ZodType<SimulationJobStatus>
export declare const SimulationJobSchema: z.ZodType<SimulationJob>
