//! vsa-fs: file operations that never follow a link a neighbour planted.
//!
//! vsa runs as root and writes into directories others can write too: in
//! the container topology the nginx container mounts the vhost and access
//! log directories read-write. Every directory vsa works in is opened once
//! ([`SafeDir`]), and every name inside it is reached relative to that
//! descriptor with `O_NOFOLLOW`: a symlink, FIFO or device planted under a
//! name vsa uses is an error or an unmanaged entry, never a path root
//! writes through. Temporary files are created exclusively (`O_EXCL`) under
//! unpredictable names, and permissions and ownership are set on the open
//! descriptor, never on a path.
//!
//! The directory a [`SafeDir`] is opened from is the operator's (a path in
//! the agent configuration, under root's control), so it is followed as
//! given; only what is below it is not trusted.

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};

/// Temporary files vsa is writing start with this; observation skips dot
/// files, and [`SafeDir::clean_temp_files`] removes what a kill left.
pub const TEMP_PREFIX: &str = ".vsa-tmp.";

/// How a file is written: its mode and, for htpasswd files, the group of
/// nginx's workers.
#[derive(Clone, Copy, Debug)]
pub struct FileMode {
    pub mode: u32,
    pub gid: Option<u32>,
}

impl FileMode {
    pub const fn private() -> FileMode {
        FileMode {
            mode: 0o600,
            gid: None,
        }
    }

    pub const fn public() -> FileMode {
        FileMode {
            mode: 0o644,
            gid: None,
        }
    }
}

/// What a name in a directory turned out to be, read without following it.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    Missing,
    /// A regular file no larger than the limit, with its content.
    File(Vec<u8>),
    /// Anything vsa never reads: a symlink, a directory, a FIFO, a socket,
    /// a device, or a regular file over the limit. The text says which.
    Other(String),
}

/// An open directory; every operation is relative to its descriptor.
#[derive(Debug)]
pub struct SafeDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl SafeDir {
    /// Opens the operator's directory `path`; `None` when it does not exist.
    pub fn open(path: &Path) -> io::Result<Option<SafeDir>> {
        match rfs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(SafeDir {
                fd,
                path: path.to_owned(),
            })),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(with_path(e.into(), path)),
        }
    }

    /// Opens the operator's directory `path`, creating it (and its parents)
    /// with `mode` when missing.
    pub fn create(path: &Path, mode: u32) -> io::Result<SafeDir> {
        use std::os::unix::fs::DirBuilderExt;
        if let Some(d) = SafeDir::open(path)? {
            return Ok(d);
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(|e| with_path(e, path))?;
        SafeDir::open(path)?.ok_or_else(|| {
            with_path(
                io::Error::new(io::ErrorKind::NotFound, "removed as it was made"),
                path,
            )
        })
    }

    /// Opens the operator's private directory (`paths.state`): created
    /// 0700 when missing, and refused unless it belongs to this user and
    /// nobody else can write to it, since everything in it is trusted.
    pub fn private(path: &Path) -> io::Result<SafeDir> {
        let dir = SafeDir::create(path, 0o700)?;
        let st = rfs::fstat(&dir.fd).map_err(|e| with_path(e.into(), path))?;
        let euid = rustix::process::geteuid().as_raw();
        if st.st_uid != euid || st.st_mode & 0o022 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is owned by uid {} with mode {:04o}: vsa keeps its lock, keys and state there, so it must belong to uid {euid} and be writable by nobody else (chown {euid} and chmod go-w it)",
                    path.display(),
                    st.st_uid,
                    st.st_mode & 0o7777
                ),
            ));
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The subdirectory `name`, created with `mode` when missing. A symlink
    /// (or anything else that is not a directory) under that name is an
    /// error.
    pub fn sub(&self, name: &str, mode: Option<u32>) -> io::Result<SafeDir> {
        let c = component(name)?;
        let path = self.path.join(name);
        if let Some(mode) = mode {
            match rfs::mkdirat(&self.fd, c.as_c_str(), Mode::from_raw_mode(mode)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(with_path(e.into(), &path)),
            }
        }
        match rfs::openat(
            &self.fd,
            c.as_c_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(SafeDir { fd, path }),
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => Err(not_followed(&path)),
            Err(e) => Err(with_path(e.into(), &path)),
        }
    }

    /// The subdirectory `name` if it exists as a directory.
    pub fn sub_existing(&self, name: &str) -> io::Result<Option<SafeDir>> {
        match self.sub(name, None) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads `name` if it is a regular file of at most `limit` bytes, never
    /// following a symlink and never blocking on a FIFO.
    pub fn read(&self, name: &str, limit: u64) -> io::Result<Entry> {
        let c = component(name)?;
        let fd = match rfs::openat(
            &self.fd,
            c.as_c_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(Entry::Missing),
            Err(rustix::io::Errno::LOOP) => return Ok(Entry::Other("a symbolic link".into())),
            Err(e) => return Err(with_path(e.into(), &self.path.join(name))),
        };
        read_opened(fd, &self.path.join(name), limit)
    }

    /// Writes `content` to `name` atomically: an exclusively created
    /// temporary file under an unpredictable name, mode and group set on
    /// its descriptor, fsync, rename over `name` (which replaces a symlink
    /// there rather than following it), fsync of the directory. A crash
    /// leaves the old file or the new one, never a mix.
    pub fn write_atomic(&self, name: &str, content: &[u8], mode: FileMode) -> io::Result<()> {
        let target = component(name)?;
        let (tmp, fd) = self.create_temp()?;
        let result = (|| {
            let mut f = std::fs::File::from(fd);
            f.write_all(content)?;
            rfs::fchmod(&f, Mode::from_raw_mode(mode.mode))?;
            if let Some(gid) = mode.gid {
                rfs::fchown(&f, None, Some(rustix::fs::Gid::from_raw(gid)))?;
            }
            f.sync_all()?;
            drop(f);
            rfs::renameat(&self.fd, tmp.as_c_str(), &self.fd, target.as_c_str())?;
            rfs::fsync(&self.fd)?;
            Ok::<(), io::Error>(())
        })();
        if result.is_err() {
            let _ = rfs::unlinkat(&self.fd, tmp.as_c_str(), AtFlags::empty());
        }
        result.map_err(|e| with_path(e, &self.path.join(name)))
    }

    fn create_temp(&self) -> io::Result<(CString, OwnedFd)> {
        for _ in 0..16 {
            let name = CString::new(format!("{TEMP_PREFIX}{}", random_hex(12)))
                .map_err(io::Error::other)?;
            match rfs::openat(
                &self.fd,
                name.as_c_str(),
                OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC
                    | OFlags::NOCTTY,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => return Ok((name, fd)),
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(with_path(e.into(), &self.path)),
            }
        }
        Err(with_path(
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "no free temporary file name after 16 tries",
            ),
            &self.path,
        ))
    }

    /// Creates `name` empty with `mode` if nothing has that name; `false`
    /// when something already does (never opened, never followed).
    pub fn create_new(&self, name: &str, mode: u32) -> io::Result<bool> {
        let c = component(name)?;
        match rfs::openat(
            &self.fd,
            c.as_c_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        ) {
            Ok(fd) => {
                // The umask may have taken bits off: say exactly what we mean.
                rfs::fchmod(&fd, Mode::from_raw_mode(mode))?;
                Ok(true)
            }
            Err(rustix::io::Errno::EXIST) => Ok(false),
            Err(e) => Err(with_path(e.into(), &self.path.join(name))),
        }
    }

    /// Opens `name` for reading and writing, creating it with `mode`; a
    /// symlink or anything but a regular file under that name is an error.
    pub fn open_rw(&self, name: &str, mode: u32, append: bool) -> io::Result<std::fs::File> {
        let c = component(name)?;
        let path = self.path.join(name);
        let mut flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if append {
            flags |= OFlags::APPEND;
        }
        let fd = match rfs::openat(&self.fd, c.as_c_str(), flags, Mode::from_raw_mode(mode)) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP) => return Err(not_followed(&path)),
            Err(e) => return Err(with_path(e.into(), &path)),
        };
        let st = rfs::fstat(&fd).map_err(|e| with_path(e.into(), &path))?;
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft != FileType::RegularFile {
            return Err(with_path(
                io::Error::other(format!("is {}, not a regular file", describe(ft))),
                &path,
            ));
        }
        Ok(std::fs::File::from(fd))
    }

    /// Removes the non-directory `name` (a symlink itself, never its
    /// target). `false` when there was nothing.
    pub fn remove(&self, name: &str) -> io::Result<bool> {
        let c = component(name)?;
        match rfs::unlinkat(&self.fd, c.as_c_str(), AtFlags::empty()) {
            Ok(()) => {
                rfs::fsync(&self.fd)?;
                Ok(true)
            }
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(with_path(e.into(), &self.path.join(name))),
        }
    }

    /// Removes the subdirectory `name` if it is empty.
    pub fn remove_empty_dir(&self, name: &str) -> io::Result<bool> {
        let c = component(name)?;
        match rfs::unlinkat(&self.fd, c.as_c_str(), AtFlags::REMOVEDIR) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTEMPTY) => Ok(false),
            Err(e) => Err(with_path(e.into(), &self.path.join(name))),
        }
    }

    /// The names in the directory (UTF-8 ones; vsa writes no other) with
    /// their types, as the directory lists them (nothing is followed).
    pub fn entries(&self) -> io::Result<Vec<(String, FileType)>> {
        let mut dir = rfs::Dir::read_from(&self.fd).map_err(|e| with_path(e.into(), &self.path))?;
        let mut out = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| with_path(e.into(), &self.path))?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            let mut ft = entry.file_type();
            if ft == FileType::Unknown {
                // Some filesystems do not fill in d_type.
                ft = rfs::statat(&self.fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_or(FileType::Unknown, |st| FileType::from_raw_mode(st.st_mode));
            }
            out.push((name.to_owned(), ft));
        }
        Ok(out)
    }

    /// Removes every temporary file a killed writer left here, and anything
    /// else planted under a temporary name (a symlink is removed, never
    /// followed). Returns how many.
    pub fn clean_temp_files(&self) -> io::Result<usize> {
        let mut n = 0;
        for (name, ft) in self.entries()? {
            if name.starts_with(TEMP_PREFIX) && ft != FileType::Directory && self.remove(&name)? {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Reads the file at `path` (an operator's or a manifest's path, such as an
/// env file) if it is a regular file of at most `limit` bytes: opened
/// without following a final symlink and without blocking on a FIFO, and
/// checked on the open descriptor. Anything else is an error saying what
/// it is.
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let fd = match rfs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => {
            return Err(io::Error::other(format!(
                "{} is a symbolic link; vsa reads only regular files here",
                path.display()
            )));
        }
        Err(e) => return Err(with_path(e.into(), path)),
    };
    match read_opened(fd, path, limit)? {
        Entry::File(bytes) => Ok(bytes),
        Entry::Other(what) => Err(io::Error::other(format!(
            "{} is {what}; vsa reads only regular files of at most {} KiB here",
            path.display(),
            limit / 1024
        ))),
        Entry::Missing => Err(io::Error::new(
            io::ErrorKind::NotFound,
            path.display().to_string(),
        )),
    }
}

/// The content of the file open as `fd` if it is a regular file of at
/// most `limit` bytes (checked on the descriptor, and again while reading,
/// for a file that grows); otherwise what it is.
fn read_opened(fd: OwnedFd, path: &Path, limit: u64) -> io::Result<Entry> {
    let st = rfs::fstat(&fd).map_err(|e| with_path(e.into(), path))?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile {
        return Ok(Entry::Other(format!(
            "{}, not a regular file",
            describe(ft)
        )));
    }
    let too_big = || Entry::Other(format!("a file larger than vsa's limit of {limit} bytes"));
    if st.st_size as u64 > limit {
        return Ok(too_big());
    }
    let mut bytes = Vec::with_capacity(st.st_size as usize);
    std::fs::File::from(fd)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| with_path(e, path))?;
    if bytes.len() as u64 > limit {
        return Ok(too_big());
    }
    Ok(Entry::File(bytes))
}

/// A single path component: what a writer may name inside its directory.
fn component(name: &str) -> io::Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{name}` is not a file name"),
        ));
    }
    CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{}` is not a file name", name.escape_debug()),
        )
    })
}

fn describe(ft: FileType) -> &'static str {
    match ft {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "of an unknown type",
    }
}

fn not_followed(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "{} is a symbolic link or not a directory; vsa does not follow links below its directories",
            path.display()
        ),
    )
}

/// An error that names the path it is about.
fn with_path(e: io::Error, path: &Path) -> io::Error {
    let text = e.to_string();
    if text.contains(&path.display().to_string()) {
        return e;
    }
    io::Error::new(e.kind(), format!("{}: {text}", path.display()))
}

/// `n` random bytes from the kernel, as hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    fill_random(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fills `buf` from the kernel's random source.
pub fn fill_random(buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        match rustix::rand::getrandom(&mut buf[done..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            // Kernels before 3.17 lack getrandom(2); vsa needs newer ones
            // for much else, so this is a broken host, not a fallback case.
            Err(e) => panic!("the kernel's random source failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    #[test]
    fn writes_replace_a_planted_symlink_instead_of_following_it() {
        let tmp = tempfile::tempdir().unwrap();
        let decoy = tmp.path().join("decoy");
        std::fs::write(&decoy, "secret").unwrap();
        std::fs::set_permissions(&decoy, std::fs::Permissions::from_mode(0o600)).unwrap();
        let dir = SafeDir::create(&tmp.path().join("d"), 0o755).unwrap();
        symlink(&decoy, tmp.path().join("d/x.conf")).unwrap();
        dir.write_atomic("x.conf", b"new", FileMode::public())
            .unwrap();
        assert_eq!(std::fs::read_to_string(&decoy).unwrap(), "secret");
        let meta = std::fs::metadata(&decoy).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let written = tmp.path().join("d/x.conf");
        assert!(std::fs::symlink_metadata(&written).unwrap().is_file());
        assert_eq!(std::fs::read_to_string(&written).unwrap(), "new");
    }

    #[test]
    fn reads_never_follow_or_block() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SafeDir::create(tmp.path(), 0o755).unwrap();
        symlink("/etc/passwd", tmp.path().join("link")).unwrap();
        std::fs::write(tmp.path().join("big"), vec![b'x'; 100]).unwrap();
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(tmp.path().join("fifo"))
            .status();
        assert_eq!(dir.read("none", 10).unwrap(), Entry::Missing);
        assert!(matches!(dir.read("link", 10).unwrap(), Entry::Other(s) if s.contains("symbolic")));
        assert!(matches!(dir.read("big", 10).unwrap(), Entry::Other(s) if s.contains("limit")));
        assert_eq!(dir.read("big", 100).unwrap(), Entry::File(vec![b'x'; 100]));
        assert!(matches!(dir.read("sub", 10).unwrap(), Entry::Other(s) if s.contains("directory")));
        if fifo.is_ok_and(|s| s.success()) {
            assert!(matches!(dir.read("fifo", 10).unwrap(), Entry::Other(s) if s.contains("FIFO")));
        }
        assert!(dir.sub("link", None).is_err());
        assert!(dir.read("../x", 10).is_err());
    }

    #[test]
    fn temp_leftovers_are_removed_and_symlinks_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let d = tmp.path().join("d");
        let dir = SafeDir::create(&d, 0o755).unwrap();
        symlink(&target, d.join(format!("{TEMP_PREFIX}planted"))).unwrap();
        std::fs::write(d.join(format!("{TEMP_PREFIX}left")), "x").unwrap();
        assert_eq!(dir.clean_temp_files().unwrap(), 2);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
    }

    #[test]
    fn open_rw_and_create_new_refuse_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let d = tmp.path().join("d");
        let dir = SafeDir::create(&d, 0o755).unwrap();
        symlink(&target, d.join("lock")).unwrap();
        assert!(dir.open_rw("lock", 0o600, false).is_err());
        assert!(!dir.create_new("lock", 0o600).unwrap());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }

    #[test]
    fn a_private_dir_must_be_ours_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("state");
        SafeDir::private(&d).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = SafeDir::private(&d).unwrap_err().to_string();
        assert!(e.contains("writable by nobody else"), "{e}");
    }
}
