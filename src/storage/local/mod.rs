//! The local filesystem backend: `{root}/{userId}/{projectId}/`, created symlink-safe by
//! `paths.rs`, checked and measured without following a single link.

pub mod paths;
pub mod staging;
pub mod tree;
pub mod usage;
pub mod walk;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{openat, statat, AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::candidate::{check_characters, relative_segments, strip_base};
use super::{DiskUsage, Location, PathCheck, StorageBackend};
use crate::error::{QuotaError, Result};
use crate::ids::{ProjectId, UserId};

pub struct LocalBackend {
  /// Canonical: every path handed out starts with it.
  root: PathBuf,
}

impl LocalBackend {
  /// Creates the root if missing and resolves it to its canonical form.
  pub fn open(root: &Path) -> Result<Self> {
    Ok(LocalBackend {
      root: paths::canonical_root(root)?,
    })
  }

  /// A backend over `root` as given, creating nothing: for pure and read-only calls made
  /// before the root was opened.
  pub fn at(root: PathBuf) -> Self {
    LocalBackend { root }
  }
}

impl StorageBackend for LocalBackend {
  fn name(&self) -> &'static str {
    "local"
  }

  fn locate(&self, user: &UserId, project: &ProjectId) -> Result<Location> {
    Ok(Location {
      backend: self.name(),
      key: super::project_key(user, project),
      path: paths::project_path(&self.root, user, project)?,
    })
  }

  fn prepare(&self, user: &UserId, project: &ProjectId) -> Result<()> {
    paths::ensure_project_dir(&self.root, user, project).map(|_| ())
  }

  fn check_path(&self, user: &UserId, project: &ProjectId, candidate: &str) -> Result<PathCheck> {
    let dir = paths::project_dir(&self.root, user, project)?;
    if let Err(reason) = check_characters(candidate) {
      return Ok(PathCheck::refused(reason));
    }
    let relative = if candidate.starts_with('/') {
      let base: Vec<&str> = dir
        .iter()
        .filter_map(|part| part.to_str())
        .filter(|part| *part != "/")
        .collect();
      match strip_base(candidate, &base) {
        Ok(rest) => rest,
        Err(reason) => return Ok(PathCheck::refused(reason)),
      }
    } else {
      candidate.to_owned()
    };
    let segments = match relative_segments(&relative) {
      Ok(segments) => segments,
      Err(reason) => return Ok(PathCheck::refused(reason)),
    };
    if let Some(reason) = linked_component(&self.root, user, project, &segments)? {
      return Ok(PathCheck::refused(reason));
    }
    let relative_path = segments.join("/");
    let mut path = dir.to_string_lossy().into_owned();
    path.push('/');
    path.push_str(&relative_path);
    Ok(PathCheck {
      inside: true,
      path: Some(path),
      relative_path: Some(relative_path),
      reason: None,
    })
  }

  fn usage(&self, user: &UserId, project: &ProjectId) -> Result<DiskUsage> {
    paths::project_dir(&self.root, user, project)?;
    usage::project_usage(&self.root, user, project)
  }

  fn local_root(&self) -> Option<&Path> {
    Some(&self.root)
  }
}

/// Walks what exists of `{root}/{user}/{project}/{segments…}` without following links and
/// names the first symlink (or non-directory in the middle) on the way, if any: writing
/// through it would land somewhere else.
fn linked_component(
  root: &Path,
  user: &UserId,
  project: &ProjectId,
  segments: &[&str],
) -> Result<Option<String>> {
  let project_name = project.to_string();
  let names: Vec<&str> = [user.as_str(), project_name.as_str()]
    .into_iter()
    .chain(segments.iter().copied())
    .collect();
  let mut dir: OwnedFd = match openat(
    CWD,
    root,
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
    Mode::empty(),
  ) {
    Ok(fd) => fd,
    Err(Errno::NOENT) => return Ok(None),
    Err(e) => {
      return Err(QuotaError::Storage(format!(
        "cannot open storage root {}: {e}",
        root.display()
      )))
    }
  };
  for (index, name) in names.iter().enumerate() {
    let stat = match statat(&dir, *name, AtFlags::SYMLINK_NOFOLLOW) {
      Ok(stat) => stat,
      // Nothing more exists: nothing below can be a link yet.
      Err(Errno::NOENT) => return Ok(None),
      Err(e) => return Err(QuotaError::Storage(format!("cannot inspect {name:?}: {e}"))),
    };
    let file_type = FileType::from_raw_mode(stat.st_mode);
    let last = index + 1 == names.len();
    if file_type == FileType::Symlink {
      return Ok(Some(format!(
        "{:?} is a symlink; paths through links are refused",
        names[..=index].join("/")
      )));
    }
    if last {
      return Ok(None);
    }
    if file_type != FileType::Directory {
      return Ok(Some(format!(
        "{:?} is not a directory",
        names[..=index].join("/")
      )));
    }
    dir = match openat(
      &dir,
      *name,
      OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
      Mode::empty(),
    ) {
      Ok(fd) => fd,
      Err(Errno::NOENT) => return Ok(None),
      // Swapped for a link between the stat and the open.
      Err(Errno::LOOP | Errno::NOTDIR) => {
        return Ok(Some(format!(
          "{:?} changed into a symlink while being checked",
          names[..=index].join("/")
        )))
      }
      Err(e) => return Err(QuotaError::Storage(format!("cannot open {name:?}: {e}"))),
    };
  }
  Ok(None)
}
