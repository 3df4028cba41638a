//! The one directory walker of the local backend. Every tree operation (measuring, copying,
//! clearing, removing) is a [`Visitor`] over it, so all of them share its rules: each directory
//! is opened with `openat(O_NOFOLLOW | O_DIRECTORY)` relative to its already open parent, each
//! entry is classified with `fstatat(AT_SYMLINK_NOFOLLOW)` relative to that parent, and no path
//! is ever resolved again from the root. A symlink, socket, FIFO or device is handed to
//! [`Visitor::other`] and never followed; a directory swapped for a link between the listing
//! and the open is caught by `O_NOFOLLOW` and reported the same way, and so is a directory on
//! another filesystem (a mount point inside the tree is never entered). No `/proc`, so it
//! works the same on Linux and macOS.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{fstat, openat, statat, AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::error::{QuotaError, Result};

/// Deepest directory nesting walked. Each level holds one open handle (two while copying); a
/// tree deeper than this is refused rather than exhausting the process's file descriptors.
pub const MAX_DEPTH: usize = 256;

/// Flags for every directory the walker (and its visitors) open.
pub const DIR_FLAGS: OFlags = OFlags::RDONLY
  .union(OFlags::DIRECTORY)
  .union(OFlags::NOFOLLOW)
  .union(OFlags::CLOEXEC);

/// What a tree operation does with each entry. `parent` is the open directory holding `name`;
/// names are single path segments, never paths.
pub trait Visitor {
  /// A regular file, as `fstatat(AT_SYMLINK_NOFOLLOW)` saw it.
  fn file(&mut self, parent: BorrowedFd<'_>, name: &CStr, stat: &Stat) -> Result<()>;
  /// A directory, already opened (`dir`) without following links; its entries come next.
  fn enter(&mut self, parent: BorrowedFd<'_>, name: &CStr, dir: BorrowedFd<'_>) -> Result<()>;
  /// Everything below the directory `name` was visited (its handle is closed).
  fn leave(&mut self, parent: BorrowedFd<'_>, name: &CStr) -> Result<()>;
  /// A symlink, socket, FIFO or device, a directory replaced by one of those (or by a file)
  /// while being walked, or a mount point: never followed or entered.
  fn other(&mut self, parent: BorrowedFd<'_>, name: &CStr) -> Result<()>;
  /// Called just before a listed directory is opened. Tests use it to swap the directory for a
  /// link at the worst moment; operations leave it empty.
  fn before_open(&mut self, _parent: BorrowedFd<'_>, _name: &CStr) {}
}

/// Walks everything below the open directory `top`, depth first. `shown` names `top` in errors.
pub fn walk(top: &OwnedFd, shown: &Path, visitor: &mut impl Visitor) -> Result<()> {
  let error = |what: &str, e: Errno| {
    QuotaError::Storage(format!("cannot {what} under {}: {e}", shown.display()))
  };
  // Another filesystem mounted inside the tree is not entered: it is not the project's.
  let device = fstat(top).map_err(|e| error("stat", e))?.st_dev;
  // Each level: the open directory being listed and its name in the level above.
  let mut stack: Vec<(Dir, Option<CString>)> =
    vec![(Dir::read_from(top).map_err(|e| error("read", e))?, None)];
  while !stack.is_empty() {
    let depth = stack.len();
    let (dir, _) = stack.last_mut().expect("not empty");
    let entry = match dir.read() {
      None => {
        let (dir, name) = stack.pop().expect("the loop holds a level");
        drop(dir);
        if let (Some(name), Some((parent, _))) = (name, stack.last()) {
          let parent = parent.fd().map_err(|e| error("read", e))?;
          visitor.leave(parent, &name)?;
        }
        continue;
      }
      Some(Ok(entry)) => entry,
      Some(Err(e)) => return Err(error("read a directory", e)),
    };
    let name = entry.file_name();
    if name == c"." || name == c".." {
      continue;
    }
    let parent = dir.fd().map_err(|e| error("read", e))?;
    let stat = match statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
      Ok(stat) => stat,
      // Deleted since it was listed: nothing to visit.
      Err(Errno::NOENT) => continue,
      Err(e) => return Err(error("inspect an entry", e)),
    };
    match FileType::from_raw_mode(stat.st_mode) {
      FileType::RegularFile => visitor.file(parent, name, &stat)?,
      FileType::Directory => {
        visitor.before_open(parent, name);
        let child = match openat(parent, name, DIR_FLAGS, Mode::empty()) {
          Ok(fd) => fd,
          Err(Errno::NOENT) => continue,
          // Replaced by a link or a file since the stat: not followed.
          Err(Errno::LOOP | Errno::NOTDIR) => {
            visitor.other(parent, name)?;
            continue;
          }
          Err(e) => return Err(error("open a directory", e)),
        };
        if fstat(&child)
          .map_err(|e| error("stat a directory", e))?
          .st_dev
          != device
        {
          visitor.other(parent, name)?;
          continue;
        }
        if depth >= MAX_DEPTH {
          return Err(QuotaError::Storage(format!(
            "{} nests directories deeper than {MAX_DEPTH} levels",
            shown.display()
          )));
        }
        visitor.enter(parent, name, child.as_fd())?;
        let name = name.to_owned();
        stack.push((Dir::new(child).map_err(|e| error("read", e))?, Some(name)));
      }
      _ => visitor.other(parent, name)?,
    }
  }
  Ok(())
}
