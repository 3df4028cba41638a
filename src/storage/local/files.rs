//! Single files inside a project directory, for the operations that address one file by its
//! relative path (moves between backends, sizes): every component is opened with
//! `openat(O_NOFOLLOW)` from the project directory's descriptor, so no link below the root is
//! ever followed, whatever was planted meanwhile. No `/proc`. Blocking; the backend runs these
//! on tokio's blocking pool.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{mkdirat, openat, statat, unlinkat, AtFlags, Dir, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::error::{QuotaError, Result};
use crate::ids::{ProjectId, UserId};
use crate::storage::StoredFile;

fn io_error(what: &str, file: &str, error: impl std::fmt::Display) -> QuotaError {
  QuotaError::Storage(format!("{what} {file:?} failed: {error}"))
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
  .union(OFlags::DIRECTORY)
  .union(OFlags::NOFOLLOW)
  .union(OFlags::CLOEXEC);

/// `{root}/{user}/{project}/` opened without following a link below the root; `None` when it
/// does not exist.
pub struct ProjectDir(OwnedFd);

impl ProjectDir {
  pub fn open(root: &Path, user: &UserId, project: &ProjectId) -> Result<Option<Self>> {
    let root_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut current = match openat(CWD, root, root_flags, Mode::empty()) {
      Ok(fd) => fd,
      Err(Errno::NOENT) => return Ok(None),
      Err(e) => {
        return Err(QuotaError::Storage(format!(
          "cannot open storage root {}: {e}",
          root.display()
        )))
      }
    };
    for name in [user.as_str().to_owned(), project.to_string()] {
      current = match openat(&current, name.as_str(), DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP | Errno::NOTDIR) => {
          return Err(QuotaError::UnsafePath(format!(
            "{name} under the storage root is a symlink or not a directory; refusing to follow it"
          )))
        }
        Err(e) => return Err(QuotaError::Storage(format!("cannot open {name}: {e}"))),
      };
    }
    Ok(Some(ProjectDir(current)))
  }

  fn fd(&self) -> &OwnedFd {
    &self.0
  }
}

/// The directory holding `file` and its last segment. With `create`, missing directories are
/// made (mode 0700); without, `None` when one is missing.
fn parent_of<'a>(
  dir: &ProjectDir,
  file: &'a str,
  create: bool,
) -> Result<Option<(OwnedFd, &'a str)>> {
  let mut segments: Vec<&str> = file.split('/').collect();
  let name = segments.pop().unwrap_or_default();
  let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
  let mut current = openat(dir.fd(), ".", flags, Mode::empty())
    .map_err(|e| io_error("opening the directory of", file, e))?;
  for segment in segments {
    if create {
      match mkdirat(&current, segment, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(io_error("creating a directory for", file, e)),
      }
    }
    current = match openat(&current, segment, flags, Mode::empty()) {
      Ok(fd) => fd,
      Err(Errno::NOENT) if !create => return Ok(None),
      Err(Errno::LOOP | Errno::NOTDIR) => {
        return Err(QuotaError::UnsafePath(format!(
        "{segment:?} on the way to {file:?} is a symlink or not a directory; refusing to follow it"
      )))
      }
      Err(e) => return Err(io_error("opening a directory of", file, e)),
    };
  }
  Ok(Some((current, name)))
}

/// The size of a regular file, `None` when it does not exist.
pub fn file_size(
  root: &Path,
  user: &UserId,
  project: &ProjectId,
  file: &str,
) -> Result<Option<i64>> {
  let Some(dir) = ProjectDir::open(root, user, project)? else {
    return Ok(None);
  };
  let Some((parent, name)) = parent_of(&dir, file, false)? else {
    return Ok(None);
  };
  match statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
    Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile => {
      Ok(Some(stat.st_size))
    }
    Ok(_) => Err(QuotaError::UnsafePath(format!(
      "{file:?} is not a regular file"
    ))),
    Err(Errno::NOENT) => Ok(None),
    Err(e) => Err(io_error("inspecting", file, e)),
  }
}

/// Opens a regular file for reading without following a link.
pub fn open_read(root: &Path, user: &UserId, project: &ProjectId, file: &str) -> Result<File> {
  let missing =
    || QuotaError::NotFound(format!("file {file:?} does not exist in project {project}"));
  let dir = ProjectDir::open(root, user, project)?.ok_or_else(missing)?;
  let (parent, name) = parent_of(&dir, file, false)?.ok_or_else(missing)?;
  match openat(
    &parent,
    name,
    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
    Mode::empty(),
  ) {
    Ok(fd) => Ok(File::from(fd)),
    Err(Errno::NOENT) => Err(missing()),
    Err(Errno::LOOP) => Err(QuotaError::UnsafePath(format!(
      "{file:?} is a symlink; refusing to follow it"
    ))),
    Err(e) => Err(io_error("opening", file, e)),
  }
}

/// Creates (or truncates) a regular file for writing, making its directories; never through
/// a link. The project directory must exist.
pub fn open_write(root: &Path, user: &UserId, project: &ProjectId, file: &str) -> Result<File> {
  let dir = ProjectDir::open(root, user, project)?
    .ok_or_else(|| QuotaError::Storage(format!("project {project} has no directory")))?;
  let (parent, name) = parent_of(&dir, file, true)?.expect("created");
  openat(
    &parent,
    name,
    OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
    Mode::from_raw_mode(0o600),
  )
  .map(File::from)
  .map_err(|e| io_error("creating", file, e))
}

/// Deletes one file; a missing one is fine.
pub fn delete(root: &Path, user: &UserId, project: &ProjectId, file: &str) -> Result<()> {
  let Some(dir) = ProjectDir::open(root, user, project)? else {
    return Ok(());
  };
  let Some((parent, name)) = parent_of(&dir, file, false)? else {
    return Ok(());
  };
  match unlinkat(&parent, name, AtFlags::empty()) {
    Ok(()) | Err(Errno::NOENT) => Ok(()),
    Err(e) => Err(io_error("deleting", file, e)),
  }
}

/// Every regular file below the project directory with its size, sorted by path. Symlinks and
/// special files are left out (never followed); names that are not UTF-8 are refused.
pub fn list(root: &Path, user: &UserId, project: &ProjectId) -> Result<Vec<StoredFile>> {
  let Some(dir) = ProjectDir::open(root, user, project)? else {
    return Ok(Vec::new());
  };
  let mut files = Vec::new();
  list_into(dir.fd(), "", 0, &mut files)?;
  files.sort_by(|a, b| a.path.cmp(&b.path));
  Ok(files)
}

fn list_into(dir: &OwnedFd, prefix: &str, depth: usize, files: &mut Vec<StoredFile>) -> Result<()> {
  if depth > super::walk::MAX_DEPTH {
    return Err(QuotaError::Storage(format!(
      "{prefix:?} is nested deeper than {} levels",
      super::walk::MAX_DEPTH
    )));
  }
  let shown = if prefix.is_empty() { "." } else { prefix };
  let mut entries = Dir::read_from(dir).map_err(|e| io_error("listing", shown, e))?;
  while let Some(entry) = entries.read() {
    let entry = entry.map_err(|e| io_error("listing", shown, e))?;
    let name = entry.file_name().to_bytes();
    if name == b"." || name == b".." {
      continue;
    }
    let name = std::str::from_utf8(name)
      .map_err(|_| io_error("listing", shown, "a file name is not UTF-8"))?;
    let path = if prefix.is_empty() {
      name.to_owned()
    } else {
      format!("{prefix}/{name}")
    };
    let stat = match statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
      Ok(stat) => stat,
      Err(Errno::NOENT) => continue, // deleted meanwhile
      Err(e) => return Err(io_error("inspecting", &path, e)),
    };
    match FileType::from_raw_mode(stat.st_mode) {
      FileType::RegularFile => files.push(StoredFile {
        path,
        bytes: stat.st_size,
      }),
      FileType::Directory => match openat(dir.as_fd(), name, DIR_FLAGS, Mode::empty()) {
        Ok(child) => list_into(&child, &path, depth + 1, files)?,
        Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => {} // swapped meanwhile: not followed
        Err(e) => return Err(io_error("opening", &path, e)),
      },
      _ => {}
    }
  }
  Ok(())
}

/// Reads up to `buf.len()` bytes; 0 at the end.
pub fn read_chunk(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
  loop {
    match file.read(buf) {
      Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
      other => return other,
    }
  }
}

pub fn write_all(file: &mut File, bytes: &[u8]) -> io::Result<()> {
  file.write_all(bytes)
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::fs;

  #[test]
  fn files_are_reached_and_listed_without_following_links() {
    let base = std::env::temp_dir().join(format!("sq-files-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    let (root, outside) = (base.join("root"), base.join("outside"));
    let user = UserId::parse("user_f").unwrap();
    let project = ProjectId::parse("3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b").unwrap();
    let dir = root.join("user_f").join(project.to_string());
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), b"12345").unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();

    let mut file = open_write(&root, &user, &project, "a/b/c.bin").unwrap();
    write_all(&mut file, b"hello").unwrap();
    assert_eq!(
      file_size(&root, &user, &project, "a/b/c.bin").unwrap(),
      Some(5)
    );
    assert_eq!(file_size(&root, &user, &project, "a/none").unwrap(), None);
    let listed = list(&root, &user, &project).unwrap();
    assert_eq!(
      listed,
      vec![StoredFile {
        path: "a/b/c.bin".into(),
        bytes: 5
      }],
      "the link and what it points at are not listed"
    );
    for through in ["link/secret", "link/new"] {
      assert_eq!(
        open_write(&root, &user, &project, through)
          .unwrap_err()
          .code(),
        "UNSAFE_PATH"
      );
    }
    assert_eq!(
      open_read(&root, &user, &project, "link")
        .unwrap_err()
        .code(),
      "UNSAFE_PATH"
    );
    assert_eq!(
      file_size(&root, &user, &project, "link/secret")
        .unwrap_err()
        .code(),
      "UNSAFE_PATH"
    );
    delete(&root, &user, &project, "link/secret").unwrap_err();
    assert!(outside.join("secret").exists());
    assert!(!outside.join("new").exists());
    delete(&root, &user, &project, "a/b/c.bin").unwrap();
    delete(&root, &user, &project, "a/b/c.bin").unwrap();
    fs::remove_dir_all(&base).unwrap();
  }
}
