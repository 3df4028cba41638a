//! Blocking filesystem work on project directories: copy and clear (sizes: `storage::usage`). Symlinks are never
//! followed (they are skipped), so none of these can reach outside the directory they are given.
//! Callers run them on tokio's blocking pool.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{openat, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::error::{QuotaError, Result};
use crate::ids::{ProjectId, UserId};

/// An existing project directory, opened without following any symlink below the root.
/// Paths under [`ProjectDir::path`] resolve through the open descriptor, so a link planted at
/// `{root}/{user}` after the check cannot redirect later reads, copies or deletions.
pub struct ProjectDir {
  fd: OwnedFd,
}

impl ProjectDir {
  /// `None` when the directory does not exist (yet).
  pub fn open(root: &Path, user: &UserId, project: &ProjectId) -> Result<Option<Self>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let root_fd = openat(CWD, root, flags, Mode::empty()).map_err(|e| {
      QuotaError::Storage(format!("cannot open storage root {}: {e}", root.display()))
    })?;
    let mut current = root_fd;
    for name in [user.as_str().to_owned(), project.to_string()] {
      current = match openat(
        &current,
        name.as_str(),
        flags | OFlags::NOFOLLOW,
        Mode::empty(),
      ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP | Errno::NOTDIR) => {
          return Err(QuotaError::UnsafePath(format!(
            "{name} under the storage root is a symlink or not a directory; refusing to follow it"
          )))
        }
        Err(error) => return Err(QuotaError::Storage(format!("cannot open {name}: {error}"))),
      };
    }
    Ok(Some(ProjectDir { fd: current }))
  }

  /// A path that names this very directory while `self` is alive.
  pub fn path(&self) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
  }
}

/// Copies the regular files and directories under `from` into the existing directory `to`.
/// Returns the bytes copied. Symlinks and special files are skipped.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<i64> {
  let mut copied = 0i64;
  let mut pending: Vec<(PathBuf, PathBuf)> = vec![(from.to_path_buf(), to.to_path_buf())];
  while let Some((source, target)) = pending.pop() {
    let entries = match fs::read_dir(&source) {
      Ok(entries) => entries,
      Err(error) if error.kind() == io::ErrorKind::NotFound && source == from => return Ok(0),
      Err(error) => return Err(error),
    };
    for entry in entries {
      let entry = entry?;
      let file_type = entry.file_type()?;
      let destination = target.join(entry.file_name());
      if file_type.is_dir() {
        fs::DirBuilder::new().mode(0o700).create(&destination)?;
        pending.push((entry.path(), destination));
      } else if file_type.is_file() {
        copied += fs::copy(entry.path(), &destination)? as i64;
      }
    }
  }
  Ok(copied)
}

/// Removes everything inside `dir`, keeping `dir` itself. A missing directory is fine.
pub fn clear_dir(dir: &Path) -> io::Result<()> {
  let entries = match fs::read_dir(dir) {
    Ok(entries) => entries,
    Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
    Err(error) => return Err(error),
  };
  for entry in entries {
    let entry = entry?;
    // remove_dir_all does not follow a symlink; it removes the link itself.
    if entry.file_type()?.is_dir() {
      fs::remove_dir_all(entry.path())?;
    } else {
      fs::remove_file(entry.path())?;
    }
  }
  Ok(())
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn project_dir_refuses_a_planted_link() {
    let base = std::env::temp_dir().join(format!("sq-disk-open-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    let outside = base.join("outside");
    let project = ProjectId::parse("3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b").unwrap();
    fs::create_dir_all(outside.join(project.to_string())).unwrap();
    fs::create_dir_all(base.join("root")).unwrap();
    let user = UserId::parse("user_a").unwrap();
    assert!(ProjectDir::open(&base.join("root"), &user, &project)
      .unwrap()
      .is_none());
    std::os::unix::fs::symlink(&outside, base.join("root/user_a")).unwrap();
    let error = ProjectDir::open(&base.join("root"), &user, &project)
      .err()
      .unwrap();
    assert_eq!(error.code(), "UNSAFE_PATH");
    fs::remove_dir_all(&base).unwrap();
  }

  #[test]
  fn copies_and_clears_without_following_links() {
    let base = std::env::temp_dir().join(format!("sq-disk-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    let (src, dst, outside) = (base.join("src"), base.join("dst"), base.join("outside"));
    fs::create_dir_all(src.join("nested")).unwrap();
    fs::create_dir_all(&dst).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(src.join("a.bin"), vec![0u8; 1000]).unwrap();
    fs::write(src.join("nested/b.bin"), vec![0u8; 24]).unwrap();
    fs::write(outside.join("secret"), vec![0u8; 5000]).unwrap();
    std::os::unix::fs::symlink(&outside, src.join("link")).unwrap();

    assert_eq!(copy_tree(&src, &dst).unwrap(), 1024);
    assert_eq!(fs::read(dst.join("nested/b.bin")).unwrap().len(), 24);
    assert!(!dst.join("link").exists(), "links are not copied");
    clear_dir(&src).unwrap();
    assert_eq!(fs::read_dir(&src).unwrap().count(), 0);
    assert!(
      outside.join("secret").exists(),
      "clearing never follows a link"
    );
    assert_eq!(copy_tree(&base.join("missing"), &dst).unwrap(), 0);
    fs::remove_dir_all(&base).unwrap();
  }
}
