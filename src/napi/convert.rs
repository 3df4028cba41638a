//! Results as JS objects: the library's answers converted into the binding's result shapes.

use super::types::*;
use crate::db::migrate;
use crate::quota::projects;

/// Builds a result struct from its own fields plus the flat usage fields every result carries.
macro_rules! with_usage {
  ($usage:expr, $ty:ident { $($field:ident : $value:expr),* $(,)? }) => {{
    let usage: $crate::quota::usage::Usage = $usage;
    $ty {
      $($field: $value,)*
      used_bytes: usage.used_bytes,
      reserved_bytes: usage.reserved_bytes,
      limit_bytes: usage.limit_bytes,
      remaining_bytes: usage.remaining_bytes(),
      percent_used: usage.percent_used(),
    }
  }};
}

pub(crate) fn path_to_js(record: projects::ProjectStoragePath) -> ProjectStoragePath {
  ProjectStoragePath {
    id: record.id.to_string(),
    project_id: record.project_id.to_string(),
    user_id: record.user_id,
    backend: record.backend,
    key: record.key,
    path: record.path,
    created_at: record.created_at,
  }
}

/// A reservation; `presigned` adds the URL, file and object path of a presigned upload.
pub(crate) fn reservation_to_js(
  r: crate::quota::reservations::Reservation,
  presigned: Option<(String, String, String)>,
) -> Reservation {
  let (upload_url, file_name, object_path) = match presigned {
    Some((url, file, path)) => (Some(url), Some(file), Some(path)),
    None => (None, None, None),
  };
  with_usage!(
    r.usage,
    Reservation {
      reservation_id: r.reservation_id.to_string(),
      user_id: r.user_id,
      project_id: r.project_id.to_string(),
      bytes: r.bytes,
      expires_at: r.expires_at,
      duplicate: r.duplicate,
      would_refuse: r.would_refuse,
      mode: r.mode.as_str().to_owned(),
      upload_url: upload_url,
      file_name: file_name,
      object_path: object_path,
    }
  )
}

/// A deletion's result (deleting a file cancels no reservation).
pub(crate) fn released_to_js(r: crate::quota::deletions::Released) -> Released {
  with_usage!(
    r.usage,
    Released {
      released_bytes: r.released_bytes,
      duplicate: r.duplicate,
      cancelled_reservations: 0,
    }
  )
}

pub(crate) fn migration_info(m: migrate::AppliedMigration) -> MigrationInfo {
  MigrationInfo {
    version: m.version,
    name: m.name,
    applied_at: m.applied_at,
  }
}

pub(crate) fn settled_to_js(s: crate::quota::reservations::Settled) -> SettledReservation {
  with_usage!(
    s.usage,
    SettledReservation {
      reservation_id: s.reservation_id.to_string(),
      user_id: s.user_id,
      project_id: s.project_id.to_string(),
      status: s.status,
      held_bytes: s.reserved_bytes,
      committed_bytes: s.committed_bytes,
      duplicate: s.duplicate,
      would_refuse: s.would_refuse,
      mode: s.mode.as_str().to_owned(),
    }
  )
}

pub(crate) fn usage_to_js(
  user_id: &str,
  r: crate::quota::limits::UsageReport,
  with_projects: bool,
) -> Usage {
  with_usage!(
    r.usage,
    Usage {
      user_id: user_id.to_owned(),
      state: r.state.to_owned(),
      used_text: r.used_text,
      limit_text: r.limit_text,
      remaining_text: r.remaining_text,
      summary: r.summary,
      projects: with_projects.then(|| {
        r.projects
          .into_iter()
          .map(|p| ProjectUsage {
            project_id: p.project_id.to_string(),
            used_bytes: p.used_bytes,
            used_text: crate::format::format_bytes(p.used_bytes),
          })
          .collect()
      }),
    }
  )
}

pub(crate) fn drift_to_js(d: crate::quota::reconcile::UserDrift) -> UserDrift {
  UserDrift {
    drift_bytes: d.drift_bytes(),
    reserved_drift_bytes: d.reserved_drift_bytes(),
    user_id: d.user_id,
    used_bytes: d.used_bytes,
    ledger_bytes: d.ledger_bytes,
    reserved_bytes: d.reserved_bytes,
    pending_reserved_bytes: d.pending_reserved_bytes,
    fixed: d.fixed,
    projects: d
      .projects
      .into_iter()
      .map(|p| ProjectDrift {
        project_id: p.project_id.to_string(),
        used_bytes: p.used_bytes,
        ledger_bytes: p.ledger_bytes,
        disk_drift_bytes: p.disk_drift_bytes(),
        path: p.path,
        disk_bytes: p.disk_bytes,
        deleted: p.deleted,
        released_bytes: p.released_bytes,
        removed: p.removed,
      })
      .collect(),
  }
}

pub(crate) use with_usage;

pub(crate) fn progress_to_js(p: crate::quota::backfill::Progress) -> BackfillProgress {
  BackfillProgress {
    phase: p.phase,
    done: p.done,
    scanned: p.scanned,
    total_projects: p.total_projects,
    paths_created: p.paths_created,
    baselines: p.baselines,
    users_seeded: p.users_seeded,
    skipped_projects: p.skipped_projects,
    skipped_owners: p
      .skipped_owners
      .into_iter()
      .map(|(owner, projects)| SkippedOwner { owner, projects })
      .collect(),
    skipped_owner_count: p.skipped_owner_count,
    storage_root: p.storage_root,
    lock_retries: p.lock_retries,
    notes: p.notes,
    started_at: p.started_at,
    finished_at: p.finished_at,
  }
}

pub(crate) fn preparation_to_js(p: crate::db::online::Preparation) -> MigrationPreparation {
  MigrationPreparation {
    done: p.done,
    tables: p.tables,
    tasks_done: p.tasks_done,
    tasks_total: p.tasks_total,
    next: p.next,
    rows_done: p.rows_done,
    rows_total: p.rows_total,
    lock_retries: p.lock_retries,
  }
}

pub(crate) fn uploaded_to_js(r: crate::quota::client::Uploaded) -> RecordedUpload {
  with_usage!(
    r.usage,
    RecordedUpload {
      upload_id: r.upload_id,
      bytes: r.bytes,
      duplicate: r.duplicate,
      counted: r.counted,
      would_refuse: r.would_refuse,
      replaced_bytes: r.replaced_bytes,
      net_bytes: r.net_bytes,
      mode: r.mode.as_str().to_owned(),
    }
  )
}

pub(crate) fn check_to_js(check: crate::quota::usage::QuotaCheck) -> QuotaCheck {
  with_usage!(
    check.usage,
    QuotaCheck {
      allowed: check.allowed,
      would_refuse: check.would_refuse,
      requested_bytes: check.requested_bytes,
      missing_bytes: check.missing_bytes(),
      fits: check.fits,
      mode: check.mode.as_str().to_owned(),
    }
  )
}
