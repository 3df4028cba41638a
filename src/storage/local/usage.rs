//! Usage of a project counted from the files on disk: one pass over the directory tree with
//! `getdents` and `fstatat(AT_SYMLINK_NOFOLLOW)` relative to open directory handles, like `du`.
//! Links are never followed, so a symlink to `/` costs nothing and counts nothing.

use std::collections::HashSet;
use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{fstat, openat, statat, AtFlags, Dir, FileType, Mode, OFlags, Stat, CWD};
use rustix::io::Errno;

use crate::error::{QuotaError, Result};
use crate::ids::{ProjectId, UserId};
use crate::storage::DiskUsage;

/// Deepest directory nesting walked. Each level holds one open handle; a tree deeper than this
/// is refused rather than exhausting the process's file descriptors.
pub const MAX_DEPTH: usize = 256;

/// Usage of `{root}/{user}/{project}/`. A project without a directory uses nothing; a symlink
/// or a file in place of one of the two directories is `UNSAFE_PATH`.
pub fn project_usage(root: &Path, user: &UserId, project: &ProjectId) -> Result<DiskUsage> {
  let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
  let root_fd = match openat(CWD, root, flags, Mode::empty()) {
    Ok(fd) => fd,
    Err(Errno::NOENT) => return Ok(DiskUsage::default()),
    Err(e) => {
      return Err(QuotaError::Storage(format!(
        "cannot open storage root {}: {e}",
        root.display()
      )))
    }
  };
  let Some(user_fd) = open_child(&root_fd, user.as_str(), &root.join(user.as_str()))? else {
    return Ok(DiskUsage::default());
  };
  let project_name = project.to_string();
  let shown = root.join(user.as_str()).join(&project_name);
  let Some(project_fd) = open_child(&user_fd, &project_name, &shown)? else {
    return Ok(DiskUsage::default());
  };
  walk(project_fd, &shown)
}

/// Opens a directory below `parent` refusing links; `None` when it does not exist.
fn open_child<Fd: AsFd>(parent: Fd, name: &str, shown: &Path) -> Result<Option<OwnedFd>> {
  let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
  match openat(parent, name, flags, Mode::empty()) {
    Ok(fd) => Ok(Some(fd)),
    Err(Errno::NOENT) => Ok(None),
    Err(Errno::LOOP | Errno::NOTDIR) => Err(QuotaError::UnsafePath(format!(
      "{} is a symlink or not a directory; storage-quota never follows links below the storage root",
      shown.display()
    ))),
    Err(e) => Err(QuotaError::Storage(format!(
      "cannot open {}: {e}",
      shown.display()
    ))),
  }
}

// `st_blocks` is i64 on some targets and u64 on others.
#[allow(clippy::unnecessary_cast)]
fn allocated(stat: &Stat) -> i64 {
  stat.st_blocks as i64 * 512
}

/// Depth-first walk holding one open directory per level.
pub fn walk(top: OwnedFd, shown: &Path) -> Result<DiskUsage> {
  let storage_error = |what: &str, e: Errno| {
    QuotaError::Storage(format!("cannot {what} under {}: {e}", shown.display()))
  };
  let mut usage = DiskUsage {
    allocated_bytes: allocated(&fstat(&top).map_err(|e| storage_error("stat", e))?),
    ..DiskUsage::default()
  };
  let mut linked: HashSet<(u64, u64)> = HashSet::new();
  let mut stack = vec![Dir::new(top).map_err(|e| storage_error("read", e))?];
  while let Some(dir) = stack.last_mut() {
    let entry = match dir.read() {
      None => {
        stack.pop();
        continue;
      }
      Some(Ok(entry)) => entry,
      Some(Err(e)) => return Err(storage_error("read a directory", e)),
    };
    let name: &CStr = entry.file_name();
    if name == c"." || name == c".." {
      continue;
    }
    let dir_fd = dir.fd().map_err(|e| storage_error("read", e))?;
    let mut kind = entry.file_type();
    let mut stat = None;
    if kind == FileType::RegularFile || kind == FileType::Unknown {
      match statat(dir_fd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => {
          kind = FileType::from_raw_mode(s.st_mode);
          stat = Some(s);
        }
        // Deleted while we walk: it no longer uses anything.
        Err(Errno::NOENT) => continue,
        Err(e) => return Err(storage_error("stat a file", e)),
      }
    }
    match kind {
      FileType::RegularFile => {
        let s = stat.expect("regular files are stat'ed above");
        if s.st_nlink > 1 && !linked.insert((s.st_dev, s.st_ino)) {
          continue;
        }
        usage.files += 1;
        usage.bytes += s.st_size;
        usage.allocated_bytes += allocated(&s);
      }
      FileType::Directory => {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match openat(dir_fd, name, flags, Mode::empty()) {
          Ok(fd) => fd,
          Err(Errno::NOENT) => continue,
          // Replaced by a link or a file since it was listed: not followed, not counted.
          Err(Errno::LOOP | Errno::NOTDIR) => {
            usage.skipped += 1;
            continue;
          }
          Err(e) => return Err(storage_error("open a directory", e)),
        };
        if stack.len() >= MAX_DEPTH {
          return Err(QuotaError::Storage(format!(
            "{} nests directories deeper than {MAX_DEPTH} levels",
            shown.display()
          )));
        }
        usage.directories += 1;
        usage.allocated_bytes += allocated(&fstat(&fd).map_err(|e| storage_error("stat", e))?);
        stack.push(Dir::new(fd).map_err(|e| storage_error("read", e))?);
      }
      _ => usage.skipped += 1,
    }
  }
  Ok(usage)
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
    for _ in 0..MAX_DEPTH + 1 {
      deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    let error = project_usage(&base, &user, &project).unwrap_err();
    assert_eq!(error.code(), "STORAGE_ERROR");
    fs::remove_dir_all(&base).unwrap();
  }
}
