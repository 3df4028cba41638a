//! The local filesystem backend: `{root}/{userId}/{projectId}/`, created symlink-safe by
//! `paths.rs`, checked and measured without following a single link.

pub mod files;
pub mod paths;
pub mod staging;
pub mod tree;
pub mod usage;
pub mod walk;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use rustix::fs::{openat, statat, AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::candidate::{check_characters, relative_segments, strip_base};
use super::{blocking, ByteStream, DiskUsage, Location, PathCheck, StorageBackend, StoredFile};
use crate::error::{QuotaError, Result};
use crate::ids::{ProjectId, UserId};

pub struct LocalBackend {
  /// Canonical: every path handed out starts with it.
  root: PathBuf,
}

impl LocalBackend {
  /// Creates the root if missing and resolves it to its canonical form.
  pub fn open(root: &Path) -> Result<Self> {
    Ok(LocalBackend {
      root: paths::canonical_root(root)?,
    })
  }

  /// A backend over `root` as given, creating nothing: for pure and read-only calls made
  /// before the root was opened.
  pub fn at(root: PathBuf) -> Self {
    LocalBackend { root }
  }
}

/// Chunk size of reads for moves between backends.
const READ_CHUNK: usize = 1024 * 1024;

impl LocalBackend {
  /// Runs `work` with a copy of the root and the ids on the blocking pool.
  async fn on_disk<T: Send + 'static>(
    &self,
    user: &UserId,
    project: &ProjectId,
    work: impl FnOnce(&Path, &UserId, &ProjectId) -> Result<T> + Send + 'static,
  ) -> Result<T> {
    let (root, user, project) = (self.root.clone(), user.clone(), project.clone());
    blocking(move || work(&root, &user, &project)).await
  }

  fn check_path_blocking(
    root: &Path,
    user: &UserId,
    project: &ProjectId,
    candidate: &str,
  ) -> Result<PathCheck> {
    let dir = paths::project_dir(root, user, project)?;
    if let Err(reason) = check_characters(candidate) {
      return Ok(PathCheck::refused(reason));
    }
    let relative = if candidate.starts_with('/') {
      let base: Vec<&str> = dir
        .iter()
        .filter_map(|part| part.to_str())
        .filter(|part| *part != "/")
        .collect();
      match strip_base(candidate, &base) {
        Ok(rest) => rest,
        Err(reason) => return Ok(PathCheck::refused(reason)),
      }
    } else {
      candidate.to_owned()
    };
    let segments = match relative_segments(&relative) {
      Ok(segments) => segments,
      Err(reason) => return Ok(PathCheck::refused(reason)),
    };
    if let Some(reason) = linked_component(root, user, project, &segments)? {
      return Ok(PathCheck::refused(reason));
    }
    let relative_path = segments.join("/");
    let mut path = dir.to_string_lossy().into_owned();
    path.push('/');
    path.push_str(&relative_path);
    Ok(PathCheck {
      inside: true,
      path: Some(path),
      relative_path: Some(relative_path),
      reason: None,
    })
  }
}

#[async_trait]
impl StorageBackend for LocalBackend {
  fn name(&self) -> &'static str {
    "local"
  }

  fn locate(&self, user: &UserId, project: &ProjectId) -> Result<Location> {
    Ok(Location {
      backend: self.name(),
      key: super::project_key(user, project),
      path: paths::project_path(&self.root, user, project)?,
    })
  }

  fn local_root(&self) -> Option<&Path> {
    Some(&self.root)
  }

  async fn prepare(&self, user: &UserId, project: &ProjectId) -> Result<()> {
    self
      .on_disk(user, project, |root, user, project| {
        paths::ensure_project_dir(root, user, project).map(|_| ())
      })
      .await
  }

  async fn check_path(
    &self,
    user: &UserId,
    project: &ProjectId,
    candidate: &str,
  ) -> Result<PathCheck> {
    let candidate = candidate.to_owned();
    self
      .on_disk(user, project, move |root, user, project| {
        Self::check_path_blocking(root, user, project, &candidate)
      })
      .await
  }

  async fn usage(&self, user: &UserId, project: &ProjectId) -> Result<DiskUsage> {
    self
      .on_disk(user, project, |root, user, project| {
        paths::project_dir(root, user, project)?;
        usage::project_usage(root, user, project)
      })
      .await
  }

  async fn list(&self, user: &UserId, project: &ProjectId) -> Result<Vec<StoredFile>> {
    self.on_disk(user, project, files::list).await
  }

  async fn copy_project(&self, user: &UserId, from: &ProjectId, to: &ProjectId) -> Result<i64> {
    let to = to.clone();
    self
      .on_disk(user, from, move |root, user, source| {
        // Through a staging directory renamed into place: nothing half-copied is ever visible.
        staging::copy_project(root, user, source, &to, &uuid::Uuid::new_v4()).map(|s| s.bytes)
      })
      .await
  }

  async fn remove_project(&self, user: &UserId, project: &ProjectId) -> Result<()> {
    self
      .on_disk(user, project, |root, user, project| {
        tree::remove_project(root, user, project).map(|_| ())
      })
      .await
  }

  async fn file_size(&self, user: &UserId, project: &ProjectId, file: &str) -> Result<Option<i64>> {
    let file = super::candidate::file_name(file)?;
    self
      .on_disk(user, project, move |root, user, project| {
        files::file_size(root, user, project, &file)
      })
      .await
  }

  async fn read(&self, user: &UserId, project: &ProjectId, file: &str) -> Result<ByteStream> {
    let name = super::candidate::file_name(file)?;
    let mut handle = self
      .on_disk(user, project, move |root, user, project| {
        files::open_read(root, user, project, &name)
      })
      .await?;
    // A blocking reader feeding a small channel: memory stays at a few chunks per file.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes>>(2);
    let shown = file.to_owned();
    tokio::task::spawn_blocking(move || loop {
      let mut buf = vec![0u8; READ_CHUNK];
      let item = match files::read_chunk(&mut handle, &mut buf) {
        Ok(0) => return,
        Ok(n) => {
          buf.truncate(n);
          Ok(Bytes::from(buf))
        }
        Err(e) => Err(QuotaError::Storage(format!(
          "reading {shown:?} failed: {e}"
        ))),
      };
      let stop = item.is_err();
      if sender.blocking_send(item).is_err() || stop {
        return;
      }
    });
    Ok(tokio_stream(receiver))
  }

  async fn write(
    &self,
    user: &UserId,
    project: &ProjectId,
    file: &str,
    mut body: ByteStream,
  ) -> Result<i64> {
    let name = super::candidate::file_name(file)?;
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(2);
    let writer = self.on_disk(user, project, move |root, user, project| {
      let mut handle = files::open_write(root, user, project, &name)?;
      let mut written = 0i64;
      while let Some(chunk) = receiver.blocking_recv() {
        files::write_all(&mut handle, &chunk)
          .map_err(|e| QuotaError::Storage(format!("writing {name:?} failed: {e}")))?;
        written += chunk.len() as i64;
      }
      handle
        .sync_all()
        .map_err(|e| QuotaError::Storage(format!("writing {name:?} failed: {e}")))?;
      Ok(written)
    });
    let feeder = async move {
      while let Some(chunk) = body.next().await {
        if sender.send(chunk?).await.is_err() {
          break; // the writer stopped: its error is the one to report
        }
      }
      Ok::<(), QuotaError>(())
    };
    let (written, fed) = futures::join!(writer, feeder);
    let written = written?;
    fed?;
    Ok(written)
  }

  async fn delete(&self, user: &UserId, project: &ProjectId, file: &str) -> Result<()> {
    let file = super::candidate::file_name(file)?;
    self
      .on_disk(user, project, move |root, user, project| {
        files::delete(root, user, project, &file)
      })
      .await
  }

  async fn presign_put(
    &self,
    _user: &UserId,
    _project: &ProjectId,
    _file: &str,
    _expires_in: Duration,
  ) -> Result<String> {
    Err(QuotaError::Storage(
      "presigned uploads need an object store (the s3 backend); on local disk the server writes the file".into(),
    ))
  }
}

/// A receiver as a stream.
fn tokio_stream(mut receiver: tokio::sync::mpsc::Receiver<Result<Bytes>>) -> ByteStream {
  futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed()
}

/// Walks what exists of `{root}/{user}/{project}/{segments…}` without following links and
/// names the first symlink (or non-directory in the middle) on the way, if any: writing
/// through it would land somewhere else.
fn linked_component(
  root: &Path,
  user: &UserId,
  project: &ProjectId,
  segments: &[&str],
) -> Result<Option<String>> {
  let project_name = project.to_string();
  let names: Vec<&str> = [user.as_str(), project_name.as_str()]
    .into_iter()
    .chain(segments.iter().copied())
    .collect();
  let mut dir: OwnedFd = match openat(
    CWD,
    root,
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
    Mode::empty(),
  ) {
    Ok(fd) => fd,
    Err(Errno::NOENT) => return Ok(None),
    Err(e) => {
      return Err(QuotaError::Storage(format!(
        "cannot open storage root {}: {e}",
        root.display()
      )))
    }
  };
  for (index, name) in names.iter().enumerate() {
    let stat = match statat(&dir, *name, AtFlags::SYMLINK_NOFOLLOW) {
      Ok(stat) => stat,
      // Nothing more exists: nothing below can be a link yet.
      Err(Errno::NOENT) => return Ok(None),
      Err(e) => return Err(QuotaError::Storage(format!("cannot inspect {name:?}: {e}"))),
    };
    let file_type = FileType::from_raw_mode(stat.st_mode);
    let last = index + 1 == names.len();
    if file_type == FileType::Symlink {
      return Ok(Some(format!(
        "{:?} is a symlink; paths through links are refused",
        names[..=index].join("/")
      )));
    }
    if last {
      return Ok(None);
    }
    if file_type != FileType::Directory {
      return Ok(Some(format!(
        "{:?} is not a directory",
        names[..=index].join("/")
      )));
    }
    dir = match openat(
      &dir,
      *name,
      OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
      Mode::empty(),
    ) {
      Ok(fd) => fd,
      Err(Errno::NOENT) => return Ok(None),
      // Swapped for a link between the stat and the open.
      Err(Errno::LOOP | Errno::NOTDIR) => {
        return Ok(Some(format!(
          "{:?} changed into a symlink while being checked",
          names[..=index].join("/")
        )))
      }
      Err(e) => return Err(QuotaError::Storage(format!("cannot open {name:?}: {e}"))),
    };
  }
  Ok(None)
}
