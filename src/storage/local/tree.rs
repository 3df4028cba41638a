//! Blocking tree operations on project directories, each a visitor of the one walker
//! (`walk.rs`): copy, clear and remove (measuring is `usage.rs`; a project's copy is built in
//! `staging.rs`). Everything is done relative
//! to directory handles opened without following links, from the root down; nothing is
//! resolved by path again, so a link planted anywhere (or swapped in while we work) is never
//! followed, and nothing outside the storage root is read, written or deleted.
//! Callers run these on tokio's blocking pool.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{
  fchmod, fstat, mkdirat, openat, unlinkat, AtFlags, FileType, Mode, OFlags, Stat, CWD,
};
use rustix::io::Errno;

use super::walk::{walk, Visitor, DIR_FLAGS};
use crate::error::{QuotaError, Result};
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

pub(super) fn unsafe_path(shown: &Path) -> QuotaError {
  QuotaError::UnsafePath(format!(
    "{} is a symlink or not a directory; storage-quota never follows links below the storage root",
    shown.display()
  ))
}

pub(super) fn storage_error(what: &str, shown: &Path, e: Errno) -> QuotaError {
  QuotaError::Storage(format!("cannot {what} {}: {e}", shown.display()))
}

/// Opens the directory `name` in `parent` refusing links; `None` when it does not exist.
pub(super) fn open_child(
  parent: BorrowedFd<'_>,
  name: &str,
  shown: &Path,
) -> Result<Option<OwnedFd>> {
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

#[cfg(test)]
#[path = "tree_tests.rs"]
mod tests;
