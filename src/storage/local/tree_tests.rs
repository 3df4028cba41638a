use std::fs;
use std::os::unix::fs::symlink;

use super::super::staging::{copy_project, remove_staging, staging_name};
use super::*;
use rustix::fs::renameat;

struct Fixture {
  base: PathBuf,
  root: PathBuf,
  outside: PathBuf,
  user: UserId,
  source: ProjectId,
  target: ProjectId,
}

impl Fixture {
  fn new(tag: &str) -> Self {
    let base = std::env::temp_dir().join(format!("sq-tree-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    let (root, outside) = (base.join("root"), base.join("outside"));
    fs::create_dir_all(outside.join("dir")).unwrap();
    fs::write(outside.join("secret"), b"outside file").unwrap();
    fs::write(outside.join("dir/inner"), b"outside dir file").unwrap();
    let fixture = Fixture {
      root: root.clone(),
      outside,
      base,
      user: UserId::parse("user_a").unwrap(),
      source: ProjectId::parse("3f2b8c1e-6a0d-4c7e-9b5a-2d1e0f9c8a7b").unwrap(),
      target: ProjectId::parse("00000000-0000-4000-8000-000000000001").unwrap(),
    };
    fs::create_dir_all(fixture.dir(&fixture.source)).unwrap();
    fixture
  }

  fn dir(&self, project: &ProjectId) -> PathBuf {
    self.root.join(self.user.as_str()).join(project.to_string())
  }

  /// Every path under `outside` with its bytes (directories as empty), sorted.
  fn outside_snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
    let mut seen = Vec::new();
    let mut pending = vec![self.outside.clone()];
    while let Some(dir) = pending.pop() {
      for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
          pending.push(path.clone());
          seen.push((path, Vec::new()));
        } else {
          seen.push((path.clone(), fs::read(&path).unwrap()));
        }
      }
    }
    seen.sort();
    seen
  }

  /// Plants every kind of link at `dir`: to an outside file, an outside directory, a dangling
  /// one and a loop.
  fn plant_links(&self, dir: &Path) {
    symlink(self.outside.join("secret"), dir.join("to-file")).unwrap();
    symlink(self.outside.join("dir"), dir.join("to-dir")).unwrap();
    symlink(self.base.join("nowhere"), dir.join("dangling")).unwrap();
    symlink(dir.join("loop"), dir.join("loop")).unwrap();
  }
}

impl Drop for Fixture {
  fn drop(&mut self) {
    let _ = fs::remove_dir_all(&self.base);
  }
}

fn token() -> uuid::Uuid {
  uuid::Uuid::new_v4()
}

#[test]
fn copies_files_and_skips_links_at_every_level() {
  let f = Fixture::new("copy");
  let src = f.dir(&f.source);
  fs::create_dir_all(src.join("a/b")).unwrap();
  fs::write(src.join("one"), vec![1u8; 1000]).unwrap();
  fs::write(src.join("a/b/two"), vec![2u8; 24]).unwrap();
  for dir in [src.clone(), src.join("a"), src.join("a/b")] {
    f.plant_links(&dir);
  }
  rustix::fs::mknodat(
    CWD,
    src.join("a/fifo"),
    FileType::Fifo,
    Mode::RUSR | Mode::WUSR,
    0,
  )
  .unwrap();
  let before = f.outside_snapshot();

  let copied = copy_project(&f.root, &f.user, &f.source, &f.target, &token()).unwrap();
  assert_eq!(copied.bytes, 1024);
  assert_eq!((copied.files, copied.directories), (2, 2));
  assert_eq!(copied.skipped, 13, "4 links × 3 levels and a FIFO");
  let dst = f.dir(&f.target);
  assert_eq!(fs::read(dst.join("a/b/two")).unwrap(), vec![2u8; 24]);
  assert!(fs::symlink_metadata(dst.join("to-dir")).is_err());
  assert_eq!(f.outside_snapshot(), before);
  // Nothing else in the user's directory: the staging directory was renamed away.
  let mut names: Vec<_> = fs::read_dir(f.root.join("user_a"))
    .unwrap()
    .map(|e| e.unwrap().file_name())
    .collect();
  names.sort();
  assert_eq!(
    names,
    [f.target.to_string(), f.source.to_string()].map(std::ffi::OsString::from)
  );
}

#[test]
fn never_writes_through_a_link_in_or_at_the_target() {
  let f = Fixture::new("target");
  fs::write(f.dir(&f.source).join("to-file"), b"source bytes").unwrap();
  let before = f.outside_snapshot();

  // A link inside an existing target directory makes it not empty.
  fs::create_dir_all(f.dir(&f.target)).unwrap();
  f.plant_links(&f.dir(&f.target));
  let error = copy_project(&f.root, &f.user, &f.source, &f.target, &token()).unwrap_err();
  assert_eq!(error.code(), "CONFLICT");
  assert_eq!(f.outside_snapshot(), before);

  // The target itself a link to an outside directory, or a file.
  fs::remove_dir_all(f.dir(&f.target)).unwrap();
  symlink(f.outside.join("dir"), f.dir(&f.target)).unwrap();
  let error = copy_project(&f.root, &f.user, &f.source, &f.target, &token()).unwrap_err();
  assert_eq!(error.code(), "UNSAFE_PATH");
  assert_eq!(f.outside_snapshot(), before);

  // The user's directory a link: refused before anything is created.
  let moved = f.base.join("moved");
  fs::rename(f.root.join("user_a"), &moved).unwrap();
  symlink(&f.outside, f.root.join("user_a")).unwrap();
  let error = copy_project(&f.root, &f.user, &f.source, &f.target, &token()).unwrap_err();
  assert_eq!(error.code(), "UNSAFE_PATH");
  assert_eq!(f.outside_snapshot(), before);
  assert_eq!(
    remove_project(&f.root, &f.user, &f.source)
      .unwrap_err()
      .code(),
    "UNSAFE_PATH"
  );
  assert_eq!(f.outside_snapshot(), before);
}

/// Wraps the copier and swaps entries for links to outside at the worst moment: a directory
/// just before the walker opens it, a file just before the copier opens it.
struct Swapper<'a> {
  inner: Copier,
  fixture: &'a Fixture,
  swaps: usize,
}

impl AsMut<Copier> for Swapper<'_> {
  fn as_mut(&mut self) -> &mut Copier {
    &mut self.inner
  }
}

impl Swapper<'_> {
  fn swap(&mut self, parent: BorrowedFd<'_>, name: &CStr, to: &Path) {
    let aside = format!("aside-{}", self.swaps);
    renameat(parent, name, parent, aside.as_str()).unwrap();
    rustix::fs::symlinkat(to, parent, name).unwrap();
    self.swaps += 1;
  }
}

impl Visitor for Swapper<'_> {
  fn file(&mut self, parent: BorrowedFd<'_>, name: &CStr, stat: &Stat) -> Result<()> {
    if name.to_bytes().starts_with(b"swap") {
      let to = self.fixture.outside.join("secret");
      self.swap(parent, name, &to);
    }
    self.inner.file(parent, name, stat)
  }
  fn enter(&mut self, parent: BorrowedFd<'_>, name: &CStr, dir: BorrowedFd<'_>) -> Result<()> {
    self.inner.enter(parent, name, dir)
  }
  fn leave(&mut self, parent: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    self.inner.leave(parent, name)
  }
  fn other(&mut self, parent: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    self.inner.other(parent, name)
  }
  fn before_open(&mut self, parent: BorrowedFd<'_>, name: &CStr) {
    if name.to_bytes().starts_with(b"swap") {
      let to = self.fixture.outside.join("dir");
      self.swap(parent, name, &to);
    }
  }
}

#[test]
fn a_directory_or_file_swapped_for_a_link_mid_walk_is_not_followed() {
  let f = Fixture::new("swap");
  let src = f.dir(&f.source);
  fs::create_dir_all(src.join("keep/swapdir")).unwrap();
  fs::write(src.join("keep/swapdir/x"), b"x").unwrap();
  fs::write(src.join("keep/swapfile"), b"source").unwrap();
  fs::write(src.join("keep/plain"), b"plain").unwrap();
  let before = f.outside_snapshot();
  let from = UserDir::open(&f.root, &f.user)
    .unwrap()
    .unwrap()
    .project(&f.source.to_string())
    .unwrap()
    .unwrap();
  fs::create_dir_all(f.dir(&f.target)).unwrap();
  let to = openat(CWD, f.dir(&f.target), DIR_FLAGS, Mode::empty()).unwrap();
  let stats = copy_with(&from, to, &src, |inner| Swapper {
    inner,
    fixture: &f,
    swaps: 0,
  })
  .unwrap();
  assert_eq!(stats.skipped, 2, "both swapped entries skipped");
  assert_eq!((stats.files, stats.bytes), (1, 5), "only keep/plain copied");
  let dst = f.dir(&f.target);
  assert!(fs::symlink_metadata(dst.join("keep/swapdir")).is_err());
  assert!(fs::symlink_metadata(dst.join("keep/swapfile")).is_err());
  assert_eq!(f.outside_snapshot(), before);

  // Removing the source now unlinks the planted links, never what they point to.
  let removed = remove_project(&f.root, &f.user, &f.source).unwrap();
  assert_eq!(removed.skipped, 2);
  assert!(!src.exists());
  assert_eq!(f.outside_snapshot(), before);
}

#[test]
fn remove_and_clear_unlink_links_without_following_them() {
  let f = Fixture::new("remove");
  let src = f.dir(&f.source);
  fs::create_dir_all(src.join("a/b")).unwrap();
  fs::write(src.join("a/b/file"), vec![0u8; 10]).unwrap();
  for dir in [src.clone(), src.join("a"), src.join("a/b")] {
    f.plant_links(&dir);
  }
  let before = f.outside_snapshot();
  let user_dir = UserDir::open(&f.root, &f.user).unwrap().unwrap();
  let dir = user_dir.project(&f.source.to_string()).unwrap().unwrap();
  let cleared = clear(&dir, &src).unwrap();
  assert_eq!(
    (cleared.files, cleared.skipped, cleared.directories),
    (1, 12, 2)
  );
  assert_eq!(fs::read_dir(&src).unwrap().count(), 0);
  assert_eq!(f.outside_snapshot(), before);
  remove_project(&f.root, &f.user, &f.source).unwrap();
  assert!(!src.exists());
  assert_eq!(
    remove_project(&f.root, &f.user, &f.source).unwrap(),
    TreeStats::default()
  );
}

#[test]
fn a_failed_copy_leaves_no_staging_directory() {
  let f = Fixture::new("fail");
  fs::write(f.dir(&f.source).join("f"), b"data").unwrap();
  fs::create_dir_all(f.dir(&f.target)).unwrap();
  fs::write(f.dir(&f.target).join("existing"), b"mine").unwrap();
  let error = copy_project(&f.root, &f.user, &f.source, &f.target, &token()).unwrap_err();
  assert_eq!(error.code(), "CONFLICT");
  assert_eq!(
    fs::read(f.dir(&f.target).join("existing")).unwrap(),
    b"mine"
  );
  assert_eq!(fs::read_dir(f.root.join("user_a")).unwrap().count(), 2);
  // A leftover staging directory (a crashed call) is removed by token.
  let stale = token();
  fs::create_dir_all(f.root.join("user_a").join(staging_name(&stale)).join("d")).unwrap();
  remove_staging(&f.root, &f.user, &stale).unwrap();
  assert_eq!(fs::read_dir(f.root.join("user_a")).unwrap().count(), 2);
}
