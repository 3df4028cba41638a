//! Usage of a project counted from the files on disk: one pass over the directory tree with
//! the one walker (`walk.rs`), like `du`.
//! Links are never followed, so a symlink to `/` costs nothing and counts nothing.

use std::collections::HashSet;
use std::ffi::CStr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{fstat, Stat};
use rustix::io::Errno;

use super::tree::UserDir;
use super::walk::{walk, Visitor};
use crate::error::{QuotaError, Result};
use crate::ids::{ProjectId, UserId};
use crate::storage::DiskUsage;

/// Usage of `{root}/{user}/{project}/`. A project without a directory uses nothing; a symlink
/// or a file in place of one of the two directories is `UNSAFE_PATH`.
pub fn project_usage(root: &Path, user: &UserId, project: &ProjectId) -> Result<DiskUsage> {
  let Some(user_dir) = UserDir::open(root, user)? else {
    return Ok(DiskUsage::default());
  };
  let name = project.to_string();
  match user_dir.project(&name)? {
    Some(dir) => measure(&dir, &user_dir.shown.join(&name)),
    None => Ok(DiskUsage::default()),
  }
}

// `st_blocks` is i64 on some targets and u64 on others.
#[allow(clippy::unnecessary_cast)]
fn allocated(stat: &Stat) -> i64 {
  stat.st_blocks as i64 * 512
}

/// Counts like `du`: a hard-linked file once, links and special files as skipped.
struct Counter {
  usage: DiskUsage,
  linked: HashSet<(u64, u64)>,
}

// `st_dev`/`st_ino` widths differ between targets too.
#[allow(clippy::unnecessary_cast)]
impl Visitor for Counter {
  fn file(&mut self, _: BorrowedFd<'_>, _: &CStr, stat: &Stat) -> Result<()> {
    if stat.st_nlink > 1 && !self.linked.insert((stat.st_dev as u64, stat.st_ino as u64)) {
      return Ok(());
    }
    self.usage.files += 1;
    self.usage.bytes += stat.st_size as i64;
    self.usage.allocated_bytes += allocated(stat);
    Ok(())
  }

  fn enter(&mut self, _: BorrowedFd<'_>, _: &CStr, dir: BorrowedFd<'_>) -> Result<()> {
    self.usage.directories += 1;
    self.usage.allocated_bytes += allocated(&fstat(dir).map_err(stat_error)?);
    Ok(())
  }

  fn leave(&mut self, _: BorrowedFd<'_>, _: &CStr) -> Result<()> {
    Ok(())
  }

  fn other(&mut self, _: BorrowedFd<'_>, _: &CStr) -> Result<()> {
    self.usage.skipped += 1;
    Ok(())
  }
}

fn stat_error(e: Errno) -> QuotaError {
  QuotaError::Storage(format!("cannot stat a directory: {e}"))
}

/// Usage of everything below the open directory `top` (which itself adds only its blocks).
pub fn measure(top: &OwnedFd, shown: &Path) -> Result<DiskUsage> {
  let mut counter = Counter {
    usage: DiskUsage {
      allocated_bytes: allocated(&fstat(top).map_err(stat_error)?),
      ..DiskUsage::default()
    },
    linked: HashSet::new(),
  };
  walk(top, shown, &mut counter)?;
  Ok(counter.usage)
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::fs;

  #[test]
  fn counts_files_once_and_never_follows_links() {
    let base = std::env::temp_dir().join(format!("sq-usage-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    let root = base.join("root");
    let outside = base.join("outside");
    let user = UserId::parse("u1").unwrap();
    let project = ProjectId::parse("3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b").unwrap();
    let dir = root.join("u1").join(project.to_string());
    fs::create_dir_all(dir.join("a/b")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(dir.join("one"), vec![0u8; 1000]).unwrap();
    fs::write(dir.join("a/b/two"), vec![0u8; 24]).unwrap();
    fs::hard_link(dir.join("one"), dir.join("a/one-again")).unwrap();
    fs::write(outside.join("big"), vec![0u8; 100_000]).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("a/escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("big"), dir.join("big")).unwrap();
    let usage = project_usage(&root, &user, &project).unwrap();
    assert_eq!((usage.bytes, usage.files), (1024, 2));
    assert_eq!((usage.directories, usage.skipped), (2, 2));
    assert!(usage.allocated_bytes > 0);
    let other = ProjectId::parse("00000000-0000-4000-8000-000000000000").unwrap();
    assert_eq!(
      project_usage(&root, &user, &other).unwrap(),
      DiskUsage::default()
    );
    fs::remove_dir_all(&base).unwrap();
  }

  #[test]
  fn refuses_trees_deeper_than_the_limit() {
    let base = std::env::temp_dir().join(format!("sq-usage-deep-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    let user = UserId::parse("u1").unwrap();
    let project = ProjectId::parse("3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b").unwrap();
    let mut deep = base.join("u1").join(project.to_string());
    for _ in 0..super::super::walk::MAX_DEPTH + 1 {
      deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    let error = project_usage(&base, &user, &project).unwrap_err();
    assert_eq!(error.code(), "STORAGE_ERROR");
    fs::remove_dir_all(&base).unwrap();
  }
}
