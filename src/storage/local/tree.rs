//! Blocking tree operations on project directories, each a visitor of the one walker
//! (`walk.rs`): copy, clear and remove (measuring is `usage.rs`). Everything is done relative
//! to directory handles opened without following links, from the root down; nothing is
//! resolved by path again, so a link planted anywhere (or swapped in while we work) is never
//! followed, and nothing outside the storage root is read, written or deleted.
//! Callers run these on tokio's blocking pool.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{
  fchmod, fstat, mkdirat, openat, renameat, unlinkat, AtFlags, FileType, Mode, OFlags, Stat, CWD,
};
use rustix::io::Errno;

use super::walk::{walk, Visitor, DIR_FLAGS};
use crate::error::{ConflictReason, QuotaError, Result};
use crate::ids::{ProjectId, UserId};

/// What a tree operation did, and what it left alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
  /// Bytes of the regular files copied (or removed).
  pub bytes: i64,
  pub files: i64,
  pub directories: i64,
  /// Symlinks, sockets, FIFOs and devices: never followed, never copied (removal unlinks the
  /// entry itself).
  pub skipped: i64,
}

/// `{root}/{user}/` opened without following a link below the root; `None` when missing.
pub struct UserDir {
  pub fd: OwnedFd,
  pub shown: PathBuf,
}

fn unsafe_path(shown: &Path) -> QuotaError {
  QuotaError::UnsafePath(format!(
    "{} is a symlink or not a directory; storage-quota never follows links below the storage root",
    shown.display()
  ))
}

fn storage_error(what: &str, shown: &Path, e: Errno) -> QuotaError {
  QuotaError::Storage(format!("cannot {what} {}: {e}", shown.display()))
}

/// Opens the directory `name` in `parent` refusing links; `None` when it does not exist.
fn open_child(parent: BorrowedFd<'_>, name: &str, shown: &Path) -> Result<Option<OwnedFd>> {
  match openat(parent, name, DIR_FLAGS, Mode::empty()) {
    Ok(fd) => Ok(Some(fd)),
    Err(Errno::NOENT) => Ok(None),
    Err(Errno::LOOP | Errno::NOTDIR) => Err(unsafe_path(shown)),
    Err(e) => Err(storage_error("open", shown, e)),
  }
}

impl UserDir {
  pub fn open(root: &Path, user: &UserId) -> Result<Option<Self>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let root_fd = match openat(CWD, root, flags, Mode::empty()) {
      Ok(fd) => fd,
      Err(Errno::NOENT) => return Ok(None),
      Err(e) => return Err(storage_error("open storage root", root, e)),
    };
    let shown = root.join(user.as_str());
    Ok(open_child(root_fd.as_fd(), user.as_str(), &shown)?.map(|fd| UserDir { fd, shown }))
  }

  /// The project directory `name` inside this user's directory; `None` when missing.
  pub fn project(&self, name: &str) -> Result<Option<OwnedFd>> {
    open_child(self.fd.as_fd(), name, &self.shown.join(name))
  }
}

/// Copies into one destination directory per level, mirroring the walk.
struct Copier {
  targets: Vec<OwnedFd>,
  stats: TreeStats,
}

impl Copier {
  fn target(&self) -> BorrowedFd<'_> {
    self
      .targets
      .last()
      .expect("the copy's top directory")
      .as_fd()
  }
}

fn copy_error(what: &str, e: impl std::fmt::Display) -> QuotaError {
  QuotaError::Storage(format!("copying failed: cannot {what}: {e}"))
}

impl Visitor for Copier {
  fn file(&mut self, parent: BorrowedFd<'_>, name: &CStr, _: &Stat) -> Result<()> {
    // O_NOFOLLOW: a file swapped for a link since the walker's stat is refused by the kernel;
    // O_NONBLOCK: one swapped for a FIFO cannot block the open.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let source = match openat(parent, name, flags, Mode::empty()) {
      Ok(fd) => fd,
      Err(Errno::NOENT) => return Ok(()),
      Err(Errno::LOOP) => {
        self.stats.skipped += 1;
        return Ok(());
      }
      Err(e) => return Err(copy_error("open a source file", e)),
    };
    let stat = fstat(&source).map_err(|e| copy_error("stat a source file", e))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
      self.stats.skipped += 1;
      return Ok(());
    }
    // O_EXCL | O_NOFOLLOW: never write through anything already there, link or not.
    let create =
      OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let target = openat(self.target(), name, create, Mode::RUSR | Mode::WUSR)
      .map_err(|e| copy_error("create a file", e))?;
    let mode = Mode::from_raw_mode(stat.st_mode & 0o700);
    fchmod(&target, mode).map_err(|e| copy_error("set a file's mode", e))?;
    let copied = std::io::copy(&mut File::from(source), &mut File::from(target))
      .map_err(|e| copy_error("copy a file", e))?;
    self.stats.bytes += copied as i64;
    self.stats.files += 1;
    Ok(())
  }

  fn enter(&mut self, _: BorrowedFd<'_>, name: &CStr, _: BorrowedFd<'_>) -> Result<()> {
    mkdirat(self.target(), name, Mode::RWXU).map_err(|e| copy_error("create a directory", e))?;
    let fd = openat(self.target(), name, DIR_FLAGS, Mode::empty())
      .map_err(|e| copy_error("open a new directory", e))?;
    self.targets.push(fd);
    self.stats.directories += 1;
    Ok(())
  }

  fn leave(&mut self, _: BorrowedFd<'_>, _: &CStr) -> Result<()> {
    self.targets.pop();
    Ok(())
  }

  fn other(&mut self, _: BorrowedFd<'_>, _: &CStr) -> Result<()> {
    self.stats.skipped += 1;
    Ok(())
  }
}

/// Copies the regular files and directories below `from` into the empty directory `to`.
pub fn copy_into(from: &OwnedFd, to: OwnedFd, shown: &Path) -> Result<TreeStats> {
  copy_with(from, to, shown, |copier| copier)
}

/// [`copy_into`] with the visitor wrapped (tests drive the walker through it).
fn copy_with<V: Visitor + AsMut<Copier>>(
  from: &OwnedFd,
  to: OwnedFd,
  shown: &Path,
  wrap: impl FnOnce(Copier) -> V,
) -> Result<TreeStats> {
  let mut visitor = wrap(Copier {
    targets: vec![to],
    stats: TreeStats::default(),
  });
  walk(from, shown, &mut visitor)?;
  Ok(visitor.as_mut().stats)
}

impl AsMut<Copier> for Copier {
  fn as_mut(&mut self) -> &mut Copier {
    self
  }
}

/// Unlinks everything it is shown: files, links (the link itself), special files, and each
/// directory once it has been emptied.
#[derive(Default)]
struct Remover {
  stats: TreeStats,
}

fn remove_error(e: Errno) -> QuotaError {
  QuotaError::Storage(format!("cannot remove an entry: {e}"))
}

// `st_size`, `st_dev` and `st_ino` widths differ between targets.
#[allow(clippy::unnecessary_cast)]
impl Visitor for Remover {
  fn file(&mut self, parent: BorrowedFd<'_>, name: &CStr, stat: &Stat) -> Result<()> {
    match unlinkat(parent, name, AtFlags::empty()) {
      Ok(()) => {
        self.stats.files += 1;
        self.stats.bytes += stat.st_size as i64;
        Ok(())
      }
      Err(Errno::NOENT) => Ok(()),
      Err(e) => Err(remove_error(e)),
    }
  }

  fn enter(&mut self, _: BorrowedFd<'_>, _: &CStr, _: BorrowedFd<'_>) -> Result<()> {
    Ok(())
  }

  fn leave(&mut self, parent: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    match unlinkat(parent, name, AtFlags::REMOVEDIR) {
      Ok(()) => self.stats.directories += 1,
      Err(Errno::NOENT) => {}
      // Something appeared in it meanwhile: the next pass of `clear` gets it.
      Err(Errno::NOTEMPTY | Errno::EXIST) => {}
      Err(e) => return Err(remove_error(e)),
    }
    Ok(())
  }

  fn other(&mut self, parent: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    // A directory swapped for a link during the walk lands here too: unlinking removes the link,
    // never what it points to (unlinkat without AT_REMOVEDIR does not follow).
    match unlinkat(parent, name, AtFlags::empty()) {
      Ok(()) => self.stats.skipped += 1,
      Err(Errno::NOENT) => {}
      // It is a directory again (swapped back): the next pass walks it.
      Err(Errno::ISDIR | Errno::PERM) => {}
      Err(e) => return Err(remove_error(e)),
    }
    Ok(())
  }
}

/// Most passes `clear` makes while entries keep appearing under it.
const CLEAR_PASSES: usize = 8;

/// Removes everything inside the open directory `dir`, keeping `dir` itself.
pub fn clear(dir: &OwnedFd, shown: &Path) -> Result<TreeStats> {
  let mut remover = Remover::default();
  for _ in 0..CLEAR_PASSES {
    let before = remover.stats;
    walk(dir, shown, &mut remover)?;
    if remover.stats == before {
      return Ok(remover.stats);
    }
  }
  Err(QuotaError::Storage(format!(
    "{} kept changing while it was being cleared",
    shown.display()
  )))
}

/// Removes the directory `name` of `parent` and everything in it, if it is still the directory
/// `dir` (opened earlier): a directory put in its place meanwhile is left alone.
pub fn remove_dir(parent: &OwnedFd, name: &str, dir: &OwnedFd, shown: &Path) -> Result<TreeStats> {
  let stats = clear(dir, shown)?;
  let ours = fstat(dir).map_err(|e| storage_error("stat", shown, e))?;
  match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
    Ok(now) if now.st_dev == ours.st_dev && now.st_ino == ours.st_ino => {
      match unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(stats),
        Err(e) => Err(storage_error("remove", shown, e)),
      }
    }
    Ok(_) | Err(Errno::NOENT) => Ok(stats),
    Err(e) => Err(storage_error("inspect", shown, e)),
  }
}

/// Removes `{root}/{user}/{project}/` and everything in it. Links inside are unlinked, never
/// followed; a link in place of either directory is `UNSAFE_PATH` and nothing is removed.
pub fn remove_project(root: &Path, user: &UserId, project: &ProjectId) -> Result<TreeStats> {
  let Some(user_dir) = UserDir::open(root, user)? else {
    return Ok(TreeStats::default());
  };
  let name = project.to_string();
  let Some(dir) = user_dir.project(&name)? else {
    return Ok(TreeStats::default());
  };
  remove_dir(&user_dir.fd, &name, &dir, &user_dir.shown.join(&name))
}

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

#[cfg(test)]
#[path = "tree_tests.rs"]
mod tests;
