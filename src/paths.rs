//! Storage paths: `{storageRoot}/{userId}/{projectId}/`, created on disk without ever
//! following a symlink below the root.
//!
//! Ids are validated (`ids.rs`) so each is one safe segment; on top of that, directories are
//! created with `mkdirat` and opened with `O_NOFOLLOW | O_DIRECTORY` relative to the already
//! opened parent, so a symlink planted at `{root}/{user}` cannot redirect us elsewhere.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{mkdirat, openat, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::error::{QuotaError, Result};
use crate::ids::{ProjectId, UserId};

/// The relative key of a project: `{userId}/{projectId}/`.
pub fn project_key(user: &UserId, project: &ProjectId) -> String {
  format!("{user}/{project}/")
}

/// `{root}/{userId}/{projectId}/` as a string with a trailing slash. Pure: touches nothing.
pub fn project_path(root: &Path, user: &UserId, project: &ProjectId) -> String {
  let mut path = root.join(user.as_str()).join(project.to_string());
  path.push("");
  path.to_string_lossy().into_owned()
}

/// Creates the storage root if missing and returns its canonical form (symlinks in the root's
/// own path are the operator's choice and are resolved once, here).
pub fn canonical_root(root: &Path) -> Result<PathBuf> {
  match std::fs::metadata(root) {
    Ok(meta) if !meta.is_dir() => {
      return Err(QuotaError::Storage(format!(
        "storage root {} exists but is not a directory",
        root.display()
      )))
    }
    Ok(_) => {}
    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
      std::fs::create_dir_all(root).map_err(|e| {
        QuotaError::Storage(format!(
          "cannot create storage root {}: {e}",
          root.display()
        ))
      })?;
    }
    Err(error) => {
      return Err(QuotaError::Storage(format!(
        "cannot use storage root {}: {error}",
        root.display()
      )))
    }
  }
  root.canonicalize().map_err(|e| {
    QuotaError::Storage(format!(
      "cannot resolve storage root {}: {e}",
      root.display()
    ))
  })
}

/// Makes sure `{root}/{user}/{project}/` exists as real directories (mode 0700) and returns it.
pub fn ensure_project_dir(root: &Path, user: &UserId, project: &ProjectId) -> Result<String> {
  let root_fd = openat(
    CWD,
    root,
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
    Mode::empty(),
  )
  .map_err(|e| QuotaError::Storage(format!("cannot open storage root {}: {e}", root.display())))?;
  let user_fd = ensure_child_dir(&root_fd, user.as_str(), root)?;
  let project_name = project.to_string();
  ensure_child_dir(&user_fd, &project_name, &root.join(user.as_str()))?;
  Ok(project_path(root, user, project))
}

/// `mkdir name` inside `parent` (fine if it exists), then open it refusing symlinks.
fn ensure_child_dir(parent: &OwnedFd, name: &str, parent_path: &Path) -> Result<OwnedFd> {
  debug_assert!(!name.contains('/') && name != ".." && name != ".");
  match mkdirat(parent, name, Mode::RWXU) {
    Ok(()) | Err(Errno::EXIST) => {}
    Err(error) => {
      return Err(QuotaError::Storage(format!(
        "cannot create {}: {error}",
        parent_path.join(name).display()
      )))
    }
  }
  openat(
    parent,
    name,
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
    Mode::empty(),
  )
  .map_err(|error| match error {
    Errno::LOOP | Errno::NOTDIR => QuotaError::UnsafePath(format!(
      "{} is a symlink or not a directory; storage-quota never follows links below the storage root",
      parent_path.join(name).display()
    )),
    other => QuotaError::Storage(format!(
      "cannot open {}: {other}",
      parent_path.join(name).display()
    )),
  })
}

#[cfg(test)]
mod tests {
  use super::*;

  fn ids() -> (UserId, ProjectId) {
    (
      UserId::parse("user_2NNEqL2nrIRdJ194ndJqAHwEfxC").unwrap(),
      ProjectId::parse("3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b").unwrap(),
    )
  }

  #[test]
  fn key_and_path_have_the_documented_shape() {
    let (user, project) = ids();
    assert_eq!(
      project_key(&user, &project),
      "user_2NNEqL2nrIRdJ194ndJqAHwEfxC/3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b/"
    );
    assert_eq!(
      project_path(Path::new("/srv/storage"), &user, &project),
      "/srv/storage/user_2NNEqL2nrIRdJ194ndJqAHwEfxC/3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b/"
    );
  }

  fn temp_root(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sq-paths-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
  }

  #[test]
  fn creates_owner_only_directories_and_is_idempotent() {
    use std::os::unix::fs::PermissionsExt;
    let root = temp_root("create");
    let (user, project) = ids();
    let first = ensure_project_dir(&root, &user, &project).unwrap();
    let second = ensure_project_dir(&root, &user, &project).unwrap();
    assert_eq!(first, second);
    let meta = std::fs::metadata(&first).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    std::fs::remove_dir_all(&root).unwrap();
  }

  #[test]
  fn refuses_a_planted_symlink() {
    let root = temp_root("symlink");
    let elsewhere = temp_root("elsewhere");
    let (user, project) = ids();
    std::os::unix::fs::symlink(&elsewhere, root.join(user.as_str())).unwrap();
    let error = ensure_project_dir(&root, &user, &project).unwrap_err();
    assert_eq!(error.code(), "UNSAFE_PATH");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::remove_dir_all(&elsewhere).unwrap();
  }
}
