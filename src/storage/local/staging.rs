//! `copyProject` on disk: a project's copy is built in a hidden staging directory of the
//! user's directory and becomes the new project's directory by one `renameat` once complete,
//! so the target shows nothing or everything. Undoing a copy removes only directories it made,
//! known by name (the staging directory) or by inode (the one renamed into place).

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{fstat, mkdirat, renameat, Mode};
use rustix::io::Errno;

use super::tree::{
  copy_into, open_child, remove_dir, storage_error, unsafe_path, TreeStats, UserDir,
};
use crate::error::{ConflictReason, QuotaError, Result};
use crate::ids::{ProjectId, UserId};

/// Where `copy_project` builds a copy: a hidden directory in the user's directory, named by
/// the copy's token, that no project id can collide with.
pub fn staging_name(token: &uuid::Uuid) -> String {
  format!(".copy-{token}")
}

/// A copy in the making: a new, hidden directory in the user's directory, named by the copy's
/// token, that no project id can collide with. It becomes the target project's directory by
/// one `renameat` once complete, so the target shows nothing or everything.
pub struct Staging {
  user_dir: UserDir,
  fd: OwnedFd,
  name: String,
  /// `(st_dev, st_ino)`: the directory an undo may remove once it is renamed into place.
  pub identity: (u64, u64),
}

impl Staging {
  #[allow(clippy::unnecessary_cast)]
  pub fn create(root: &Path, user: &UserId, token: &uuid::Uuid) -> Result<Self> {
    let user_dir = match UserDir::open(root, user)? {
      Some(dir) => dir,
      None => {
        super::paths::ensure_user_dir(root, user)?;
        UserDir::open(root, user)?
          .ok_or_else(|| QuotaError::Storage(format!("{} vanished", root.display())))?
      }
    };
    let name = staging_name(token);
    let shown = user_dir.shown.join(&name);
    mkdirat(&user_dir.fd, name.as_str(), Mode::RWXU)
      .map_err(|e| storage_error("create", &shown, e))?;
    let fd = open_child(user_dir.fd.as_fd(), &name, &shown)?
      .ok_or_else(|| QuotaError::Storage(format!("{} vanished", shown.display())))?;
    let stat = fstat(&fd).map_err(|e| storage_error("stat", &shown, e))?;
    Ok(Staging {
      user_dir,
      fd,
      name,
      identity: (stat.st_dev as u64, stat.st_ino as u64),
    })
  }

  /// Copies `{source}` into the staging directory and renames it to `{target}`. A target that
  /// exists must be an empty directory, which the rename replaces; one with anything in it is
  /// `CONFLICT` (`TARGET_NOT_EMPTY`), a link or file there `UNSAFE_PATH`. On failure the
  /// staging directory is removed and the target left as it was.
  pub fn fill_and_place(self, source: &ProjectId, target: &ProjectId) -> Result<TreeStats> {
    let result = self.fill(source).and_then(|stats| {
      let target_name = target.to_string();
      let dir = &self.user_dir.fd;
      match renameat(dir, self.name.as_str(), dir, target_name.as_str()) {
        Ok(()) => Ok(stats),
        Err(Errno::NOTEMPTY | Errno::EXIST) => Err(QuotaError::conflict(
          ConflictReason::TargetNotEmpty,
          format!("project {target} already has files; copy into a new, empty project"),
        )),
        Err(Errno::NOTDIR | Errno::ISDIR) => {
          Err(unsafe_path(&self.user_dir.shown.join(&target_name)))
        }
        Err(e) => Err(storage_error(
          "rename into",
          &self.user_dir.shown.join(&target_name),
          e,
        )),
      }
    });
    if result.is_err() {
      let shown = self.user_dir.shown.join(&self.name);
      let _ = remove_dir(&self.user_dir.fd, &self.name, &self.fd, &shown);
    }
    result
  }

  fn fill(&self, source: &ProjectId) -> Result<TreeStats> {
    let source_name = source.to_string();
    let Some(from) = self.user_dir.project(&source_name)? else {
      return Ok(TreeStats::default());
    };
    let to = self.fd.try_clone().map_err(|e| {
      QuotaError::Storage(format!(
        "cannot open {}: {e}",
        self.user_dir.shown.display()
      ))
    })?;
    copy_into(&from, to, &self.user_dir.shown.join(&source_name))
  }
}

/// Copies `{root}/{user}/{source}/` to `{target}` through a [`Staging`] directory.
pub fn copy_project(
  root: &Path,
  user: &UserId,
  source: &ProjectId,
  target: &ProjectId,
  token: &uuid::Uuid,
) -> Result<TreeStats> {
  Staging::create(root, user, token)?.fill_and_place(source, target)
}

/// Removes a copy's leftover staging directory (its call died before renaming it), if any.
pub fn remove_staging(root: &Path, user: &UserId, token: &uuid::Uuid) -> Result<()> {
  let Some(user_dir) = UserDir::open(root, user)? else {
    return Ok(());
  };
  let name = staging_name(token);
  let shown = user_dir.shown.join(&name);
  match open_child(user_dir.fd.as_fd(), &name, &shown) {
    Ok(Some(dir)) => remove_dir(&user_dir.fd, &name, &dir, &shown).map(|_| ()),
    Ok(None) => Ok(()),
    Err(error) => Err(error),
  }
}

#[allow(clippy::unnecessary_cast)]
/// Undoes a copy renamed into place: removes `{target}` if it is still the directory this copy
/// made (same inode as `expected`).
pub fn remove_copied(
  root: &Path,
  user: &UserId,
  target: &ProjectId,
  expected: (u64, u64),
) -> Result<()> {
  let Some(user_dir) = UserDir::open(root, user)? else {
    return Ok(());
  };
  let name = target.to_string();
  let Some(dir) = user_dir.project(&name)? else {
    return Ok(());
  };
  let stat = fstat(&dir).map_err(|e| storage_error("stat", &user_dir.shown, e))?;
  if (stat.st_dev as u64, stat.st_ino as u64) != expected {
    return Ok(());
  }
  remove_dir(&user_dir.fd, &name, &dir, &user_dir.shown.join(&name)).map(|_| ())
}
