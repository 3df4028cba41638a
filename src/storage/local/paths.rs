//! Storage paths: `{storageRoot}/{userId}/{projectId}/`, created on disk without ever
//! following a symlink below the root.
//!
//! Ids are validated (`ids.rs`) so each is one safe segment; on top of that, directories are
//! created with `mkdirat` and opened with `O_NOFOLLOW | O_DIRECTORY` relative to the already
//! opened parent, so a symlink planted at `{root}/{user}` cannot redirect us elsewhere.

use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{fchmod, fstat, mkdirat, openat, Mode, OFlags, CWD};
use rustix::io::Errno;
use rustix::process::geteuid;

use crate::error::{QuotaError, Result};
use crate::ids::{ProjectId, UserId};

/// `{root}/{userId}/{projectId}`, checked after joining: exactly the two id segments below
/// `root`, nothing else. Valid ids make this hold by construction; the check is there so that a
/// future change to the id rules cannot silently open a way out (`Path::join` with an absolute
/// or `..` segment would). Pure: touches nothing.
pub fn project_dir(root: &Path, user: &UserId, project: &ProjectId) -> Result<PathBuf> {
  let project_name = project.to_string();
  let dir = root.join(user.as_str()).join(&project_name);
  let below: Vec<Component<'_>> = dir
    .strip_prefix(root)
    .map(|rest| rest.components().collect())
    .unwrap_or_default();
  let expected = [
    Component::Normal(user.as_str().as_ref()),
    Component::Normal(project_name.as_ref()),
  ];
  if !root.is_absolute() || below != expected {
    return Err(QuotaError::invalid(format!(
      "user {user} and project {project} do not make a path of two segments under the storage root"
    )));
  }
  Ok(dir)
}

/// `{root}/{userId}/{projectId}/` as a string with a trailing slash. Pure: touches nothing.
pub fn project_path(root: &Path, user: &UserId, project: &ProjectId) -> Result<String> {
  let mut path = project_dir(root, user, project)?;
  path.push("");
  Ok(path.to_string_lossy().into_owned())
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
  // Checked before anything is created.
  let path = project_path(root, user, project)?;
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
  Ok(path)
}

/// Makes sure `{root}/{user}/` exists as a real directory of ours (mode 0700).
pub fn ensure_user_dir(root: &Path, user: &UserId) -> Result<()> {
  let root_fd = openat(
    CWD,
    root,
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
    Mode::empty(),
  )
  .map_err(|e| QuotaError::Storage(format!("cannot open storage root {}: {e}", root.display())))?;
  ensure_child_dir(&root_fd, user.as_str(), root).map(|_| ())
}

/// `mkdir name` inside `parent` (fine if it exists), then open it refusing symlinks, and make
/// sure it is ours and owner-only.
fn ensure_child_dir(parent: &OwnedFd, name: &str, parent_path: &Path) -> Result<OwnedFd> {
  debug_assert!(!name.contains('/') && name != ".." && name != ".");
  let shown = || parent_path.join(name).display().to_string();
  match mkdirat(parent, name, Mode::RWXU) {
    Ok(()) | Err(Errno::EXIST) => {}
    Err(error) => {
      return Err(QuotaError::Storage(format!(
        "cannot create {}: {error}",
        shown()
      )))
    }
  }
  let fd = openat(
    parent,
    name,
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
    Mode::empty(),
  )
  .map_err(|error| match error {
    Errno::LOOP | Errno::NOTDIR => QuotaError::UnsafePath(format!(
      "{} is a symlink or not a directory; storage-quota never follows links below the storage root",
      shown()
    )),
    other => QuotaError::Storage(format!("cannot open {}: {other}", shown())),
  })?;
  let stat =
    fstat(&fd).map_err(|e| QuotaError::Storage(format!("cannot stat {}: {e}", shown())))?;
  if stat.st_uid != geteuid().as_raw() {
    return Err(QuotaError::UnsafePath(format!(
      "{} belongs to uid {}, not to this process (uid {}); storage-quota only uses directories it owns",
      shown(),
      stat.st_uid,
      geteuid().as_raw()
    )));
  }
  // A directory made before (by an older version, by hand, under a lax umask) is tightened.
  if stat.st_mode & 0o077 != 0 {
    fchmod(&fd, Mode::RWXU)
      .map_err(|e| QuotaError::Storage(format!("cannot restrict {} to its owner: {e}", shown())))?;
  }
  Ok(fd)
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::storage::project_key;

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
      project_path(Path::new("/srv/storage"), &user, &project).unwrap(),
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
  fn paths_need_an_absolute_root() {
    let (user, project) = ids();
    let error = project_dir(Path::new("relative/root"), &user, &project).unwrap_err();
    assert_eq!(error.code(), "INVALID_ARGUMENT");
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
