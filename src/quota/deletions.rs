//! Giving bytes back: file deletions, overwrites (charged the net change) and project removal.
//! Each runs in a transaction that first locks the user's quota row, so it is serialised with
//! every charge of that user and reads the ledger as it is after them. Releases always succeed
//! for bytes that were counted, even over quota, and never take usage below zero.

use crate::db::session::Tx;

use crate::db::pool::PgConnection;
use crate::error::{ConflictReason, QuotaError, Result};
use crate::ids::{ProjectId, UserId};
use crate::quota::modes::{decide, Decision};
use crate::quota::owner::check_owner;
use crate::quota::usage::Usage;
use crate::rollout::Mode;

#[derive(Debug, Clone)]
pub struct Released {
  /// Bytes given back by this call (0 for a duplicate).
  pub released_bytes: i64,
  pub duplicate: bool,
  pub usage: Usage,
}

#[derive(Debug, Clone)]
pub struct Overwritten {
  pub upload_id: String,
  pub bytes: i64,
  /// Bytes of the replaced content that were counted and are now given back.
  pub replaced_bytes: i64,
  /// `bytes − replacedBytes`: what the quota was charged (negative: given back).
  pub net_bytes: i64,
  pub duplicate: bool,
  pub would_refuse: bool,
  pub usage: Usage,
}

#[derive(Debug, Clone)]
pub struct RemovedProject {
  pub released_bytes: i64,
  pub cancelled_reservations: i64,
  pub usage: Usage,
}

const LOCK_QUOTA: &str =
  "SELECT used_bytes, reserved_bytes, limit_bytes FROM user_quotas WHERE user_id = $1 FOR UPDATE";

async fn lock_quota(tx: &Tx<'_>, user: &UserId) -> Result<Option<Usage>> {
  Ok(
    tx.query_opt(LOCK_QUOTA, &[&user.as_str()])
      .await?
      .map(|row| Usage::from_row(&row, 0)),
  )
}

/// The project's owner check for releases: its row, or — once the app deleted the row — the
/// user's own ledger entries for it (their project counter).
async fn check_release_owner(tx: &Tx<'_>, user: &UserId, project: &ProjectId) -> Result<()> {
  let owner: Option<String> = tx
    .query_opt(
      "SELECT user_id FROM storage_quota_project($1)",
      &[&project.as_str()],
    )
    .await?
    .map(|row| row.get(0));
  let known = owner.is_none()
    && tx
      .query_one(
        "SELECT EXISTS (SELECT 1 FROM quota_project_usage WHERE user_id = $1 AND project_id = $2)",
        &[&user.as_str(), &project.as_str()],
      )
      .await?
      .get::<_, bool>(0);
  release_owner(owner, known, user, project)
}

/// The owner rule for releases (`check_owner`), where a project without a row is still the
/// user's when they have a counter for it (`known`).
pub(crate) fn release_owner(
  owner: Option<String>,
  known: bool,
  user: &UserId,
  project: &ProjectId,
) -> Result<()> {
  if owner.is_none() && known {
    return Ok(());
  }
  check_owner(owner, user, project)
}

/// What the project has counted: its counter (kept with every ledger entry, migration 0003).
async fn project_counted(tx: &Tx<'_>, user: &UserId, project: &ProjectId) -> Result<i64> {
  Ok(
    tx.query_opt(
      "SELECT used_bytes FROM quota_project_usage WHERE user_id = $1 AND project_id = $2",
      &[&user.as_str(), &project.as_str()],
    )
    .await?
    .map_or(0, |row| row.get(0)),
  )
}

/// A ledger entry already written under one of the user's keys.
pub(crate) struct Prior {
  /// Bytes counted (negative for a release).
  pub bytes: i64,
  pub project: Option<String>,
  /// What that request asked for, when it differs from what was counted.
  pub requested: Option<i64>,
}

async fn prior_entry(tx: &Tx<'_>, user: &UserId, key: &str) -> Result<Option<Prior>> {
  Ok(
    tx.query_opt(
      "SELECT bytes, project_id, requested_bytes FROM quota_ledger WHERE user_id = $1 AND idempotency_key = $2",
      &[&user.as_str(), &key],
    )
    .await?
    .map(|row| Prior {
      bytes: row.get(0),
      project: row.get(1),
      requested: row.get(2),
    }),
  )
}

/// A ledger entry to write: key, kind, bytes counted, and the bytes asked for.
type Entry<'a> = (&'a str, &'a str, i64, i64);

/// Applies `delta` to used_bytes and writes the ledger entries, returning the new usage.
/// `allow_over_limit` lifts the database guard for this transaction (shadow mode only).
async fn apply(
  tx: &Tx<'_>,
  user: &UserId,
  project: &ProjectId,
  delta: i64,
  entries: &[Entry<'_>],
  allow_over_limit: bool,
) -> Result<Usage> {
  if allow_over_limit {
    tx.batch_execute("SET LOCAL storage_quota.allow_over_limit = 'on'")
      .await?;
  }
  let row = tx
    .query_one(
      "UPDATE user_quotas SET used_bytes = used_bytes + $2, updated_at = now() WHERE user_id = $1
       RETURNING used_bytes, reserved_bytes, limit_bytes",
      &[&user.as_str(), &delta],
    )
    .await?;
  for (key, kind, bytes, requested) in entries {
    tx.execute(
      "INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes, requested_bytes)
       VALUES ($1, $2, $3, $4, $5, $6)",
      &[&user.as_str(), &project.as_str(), key, kind, bytes, requested],
    )
    .await?;
  }
  Ok(Usage::from_row(&row, 0))
}

/// What a deletion names: the upload it removes (exact bytes, once), or a number of bytes.
#[derive(Debug, Clone)]
pub enum DeletionTarget {
  Upload {
    upload_id: String,
    bytes: Option<i64>,
  },
  Bytes {
    bytes: i64,
    deletion_id: String,
  },
}

impl DeletionTarget {
  /// The ledger key the deletion is recorded under (no upload or deletion id has a space, so it
  /// never meets an upload's key).
  pub(crate) fn key(&self) -> String {
    match self {
      DeletionTarget::Upload { upload_id, .. } => format!("deletion of {upload_id}"),
      DeletionTarget::Bytes { deletion_id, .. } => format!("deletion {deletion_id}"),
    }
  }

  /// The upload a deletion by upload id names (its ledger key).
  pub(crate) fn upload_id(&self) -> Option<&str> {
    match self {
      DeletionTarget::Upload { upload_id, .. } => Some(upload_id),
      DeletionTarget::Bytes { .. } => None,
    }
  }

  /// The bytes the deletion asks to give back: a named upload's recorded bytes (`upload`, its
  /// ledger entry), which must exist, for this project and of the size given if any.
  pub(crate) fn wanted(&self, project: &ProjectId, upload: Option<&Prior>) -> Result<i64> {
    let (upload_id, bytes) = match self {
      DeletionTarget::Upload { upload_id, bytes } => (upload_id, bytes),
      DeletionTarget::Bytes { bytes, .. } => return Ok(*bytes),
    };
    let Some(Prior {
      bytes: recorded,
      project: recorded_project,
      ..
    }) = upload
    else {
      return Err(QuotaError::NotFound(format!(
        "upload {upload_id:?} was never recorded for this user"
      )));
    };
    if recorded_project.as_deref() != Some(project.as_str())
      || bytes.is_some_and(|b| b != *recorded)
    {
      return Err(QuotaError::conflict(
        ConflictReason::Mismatch,
        format!(
          "upload {upload_id:?} was recorded with {recorded} bytes for another project or size"
        ),
      ));
    }
    Ok(*recorded)
  }
}

/// A deletion whose key has a ledger entry (`prior`): the same request answers the first
/// outcome (the bytes it released); another one is KEY_REUSED.
pub(crate) fn retried(prior: &Prior, project: &ProjectId, wanted: i64) -> Result<i64> {
  let asked = prior.requested.unwrap_or(-prior.bytes);
  if prior.project.as_deref() != Some(project.as_str()) || asked != wanted {
    return Err(QuotaError::conflict(
      ConflictReason::KeyReused,
      format!(
        "this deletion id was used for another project or size ({asked} bytes); use a new deletionId"
      ),
    ));
  }
  Ok(-prior.bytes)
}

/// What a deletion gives back: what it asks for, as far as the project counted it, never below
/// zero usage.
pub(crate) fn releasable(wanted: i64, counted: i64, used: i64) -> i64 {
  wanted.min(counted).min(used).max(0)
}

pub async fn record_deletion(
  conn: &mut PgConnection,
  user: &UserId,
  project: &ProjectId,
  target: &DeletionTarget,
  default_limit: i64,
) -> Result<Released> {
  let tx = conn.transaction().await?;
  let Some(usage) = lock_quota(&tx, user).await? else {
    check_release_owner(&tx, user, project).await?;
    // Nothing was ever counted for this user.
    return Ok(Released {
      released_bytes: 0,
      duplicate: false,
      usage: Usage::empty(default_limit),
    });
  };
  check_release_owner(&tx, user, project).await?;
  let upload = match target.upload_id() {
    Some(upload_id) => prior_entry(&tx, user, upload_id).await?,
    None => None,
  };
  let wanted = target.wanted(project, upload.as_ref())?;
  let key = target.key();
  if let Some(prior) = prior_entry(&tx, user, &key).await? {
    let released_bytes = retried(&prior, project, wanted)?;
    tx.commit().await?;
    return Ok(Released {
      released_bytes,
      duplicate: true,
      usage,
    });
  }
  let counted = project_counted(&tx, user, project).await?;
  let released = releasable(wanted, counted, usage.used_bytes);
  let usage = apply(
    &tx,
    user,
    project,
    -released,
    &[(&key, "deletion", -released, wanted)],
    false,
  )
  .await?;
  tx.commit().await?;
  Ok(Released {
    released_bytes: released,
    duplicate: false,
    usage,
  })
}

/// Replaces content of `replaced_bytes` (as far as it was counted) with `bytes`, charging the
/// difference: a bigger file needs room only for the growth, a smaller one always fits.
#[allow(clippy::too_many_arguments)]
pub async fn record_overwrite(
  conn: &mut PgConnection,
  user: &UserId,
  project: &ProjectId,
  bytes: i64,
  replaced_bytes: i64,
  upload_id: &str,
  default_limit: i64,
  mode: Mode,
) -> Result<Overwritten> {
  crate::quota::usage::ensure_quota_row(conn, user, default_limit).await?;
  let tx = conn.transaction().await?;
  let usage = lock_quota(&tx, user)
    .await?
    .ok_or_else(|| QuotaError::Internal("quota row missing after it was ensured".into()))?;
  check_release_owner(&tx, user, project).await?;
  if let Some(prior_entry) = prior_entry(&tx, user, upload_id).await? {
    let prior = prior_entry.requested.unwrap_or(prior_entry.bytes);
    if prior != bytes || prior_entry.project.as_deref() != Some(project.as_str()) {
      return Err(QuotaError::conflict(
        ConflictReason::KeyReused,
        format!(
        "uploadId {upload_id:?} was already recorded with {prior} bytes for another project or size"
      ),
      ));
    }
    tx.commit().await?;
    return Ok(Overwritten {
      upload_id: upload_id.to_owned(),
      bytes,
      replaced_bytes: 0,
      net_bytes: 0,
      duplicate: true,
      would_refuse: false,
      usage,
    });
  }
  let counted = project_counted(&tx, user, project).await?;
  let replaced = releasable(replaced_bytes, counted, usage.used_bytes);
  let growth = bytes - replaced;
  let would_refuse = growth > 0 && !usage.fits(growth);
  // The new content is new bytes (the mode decides); the replaced content is a release, made
  // in every mode.
  let counted_bytes = match decide(mode, !would_refuse) {
    Decision::Refuse => return Err(QuotaError::QuotaExceeded(usage.shortfall(growth))),
    Decision::Count => bytes,
    Decision::Skip => 0,
  };
  let net = counted_bytes - replaced;
  let deletion_key = format!("overwrite by {upload_id}");
  let entries = [
    (upload_id, "upload", counted_bytes, bytes),
    (deletion_key.as_str(), "deletion", -replaced, replaced),
  ];
  let usage = apply(&tx, user, project, net, &entries, would_refuse && net > 0).await?;
  tx.commit().await?;
  Ok(Overwritten {
    upload_id: upload_id.to_owned(),
    bytes,
    replaced_bytes: replaced,
    net_bytes: net,
    duplicate: false,
    would_refuse,
    usage,
  })
}

/// Releases everything counted for the project and cancels its pending reservations.
pub async fn remove_project(
  conn: &mut PgConnection,
  user: &UserId,
  project: &ProjectId,
  default_limit: i64,
) -> Result<RemovedProject> {
  let tx = conn.transaction().await?;
  // Reservations first (their rows, then the quota row), the order commit and cancel use.
  let cancelled = tx
    .query(
      "UPDATE quota_reservations SET status = 'cancelled', settled_at = now()
        WHERE user_id = $1 AND project_id = $2 AND status = 'pending' RETURNING bytes",
      &[&user.as_str(), &project.as_str()],
    )
    .await?;
  let held: i64 = cancelled.iter().map(|row| row.get::<_, i64>(0)).sum();
  let Some(usage) = lock_quota(&tx, user).await? else {
    check_release_owner(&tx, user, project).await?;
    tx.commit().await?;
    return Ok(RemovedProject {
      released_bytes: 0,
      cancelled_reservations: 0,
      usage: Usage::empty(default_limit),
    });
  };
  check_release_owner(&tx, user, project).await?;
  if held > 0 {
    tx.execute(
      "UPDATE user_quotas SET reserved_bytes = reserved_bytes - $2 WHERE user_id = $1",
      &[&user.as_str(), &held],
    )
    .await?;
  }
  let counted = project_counted(&tx, user, project).await?;
  let released = counted.min(usage.used_bytes).max(0);
  let usage = if released > 0 {
    let key = format!("removal {}", uuid::Uuid::new_v4());
    apply(
      &tx,
      user,
      project,
      -released,
      &[(&key, "removal", -released, released)],
      false,
    )
    .await?
  } else {
    lock_quota(&tx, user).await?.unwrap_or(usage)
  };
  tx.commit().await?;
  Ok(RemovedProject {
    released_bytes: released,
    cancelled_reservations: cancelled.len() as i64,
    usage,
  })
}
