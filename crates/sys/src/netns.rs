//! Network namespaces: named ones the way `ip netns add` makes them (a bind mount at
//! `/run/netns/NAME`, so `ip netns exec NAME` works), and running code inside one.
//!
//! Nothing here ever moves the caller's thread: [`NetNs::run`] and [`NetNs::spawn`] run the
//! closure on a fresh OS thread that `setns()`-ed into the namespace, and [`NetNs::netlink`]
//! opens its netlink socket on such a thread (a netlink socket stays bound to the namespace it
//! was created in, whichever thread later uses it).

use std::{
    fs::{self, File},
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    path::{Path, PathBuf},
    sync::Mutex,
    thread,
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg, OFlag},
    mount::{MntFlags, MsFlags},
    sched::CloneFlags,
    sys::{stat::Mode, statfs},
};

use crate::{
    Netlink,
    error::{Error, NsLabel, Result},
};

/// Where named namespaces live, as with iproute2.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// The longest namespace name: it is a file name under [`NETNS_RUN_DIR`].
pub const MAX_NETNS_NAME_LEN: usize = 255;

/// The calling thread's own namespace file. `/proc/self/ns/net` would be the *main* thread's,
/// which differs as soon as one thread has `setns()`-ed; `thread-self` is always right.
const THREAD_SELF_NETNS: &str = "/proc/thread-self/ns/net";

/// Serialises the one-time `/run/netns` mount setup within this process (parallel tests);
/// across processes an `flock` on the directory does the same.
static RUN_DIR_SETUP: Mutex<()> = Mutex::new(());

/// An open network namespace. Holding it keeps the namespace alive (the kernel keeps a
/// namespace while a file descriptor refers to it), even after [`NetNs::delete`].
#[derive(Debug)]
pub struct NetNs {
    name: Option<String>,
    path: PathBuf,
    file: File,
    label: NsLabel,
}

fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "a namespace name must not be empty"
    } else if name.len() > MAX_NETNS_NAME_LEN {
        "a namespace name is a file name and must be at most 255 bytes"
    } else if name.contains('/') || name.contains('\0') || name == "." || name == ".." {
        "a namespace name is a file name under /run/netns: no '/', NUL, '.' or '..'"
    } else {
        return Ok(());
    };
    Err(Error::Invalid {
        what: "network namespace name",
        value: name.to_owned(),
        reason,
    })
}

fn sys_err(
    op: &'static str,
    object: impl Into<String>,
    netns: &NsLabel,
) -> impl FnOnce(Errno) -> Error {
    let object = object.into();
    let netns = netns.clone();
    move |source| Error::Sys {
        op,
        object,
        netns,
        source,
    }
}

fn io_err(op: &'static str, object: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let object = object.into();
    move |source| Error::Io {
        op,
        object,
        netns: NsLabel::current(),
        source,
    }
}

/// Makes `/run/netns` exist and be a shared mount point, exactly as `ip netns add` does, so
/// that namespace bind mounts made here show up in other mount namespaces and vice versa.
fn prepare_run_dir() -> Result<()> {
    let _in_process = RUN_DIR_SETUP
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = Path::new(NETNS_RUN_DIR);
    fs::create_dir_all(dir).map_err(io_err("creating directory", NETNS_RUN_DIR))?;
    let dir_file = File::open(dir).map_err(io_err("opening directory", NETNS_RUN_DIR))?;
    let _across_processes = Flock::lock(dir_file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| sys_err("locking", NETNS_RUN_DIR, &NsLabel::current())(errno))?;

    let make_shared = || {
        nix::mount::mount(
            None::<&str>,
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself first (iproute2 does the same).
        Err(Errno::EINVAL) => {
            nix::mount::mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(sys_err(
                "bind-mounting onto itself",
                NETNS_RUN_DIR,
                &NsLabel::current(),
            ))?;
            make_shared().map_err(sys_err(
                "making shared mount",
                NETNS_RUN_DIR,
                &NsLabel::current(),
            ))
        }
        Err(errno) => Err(sys_err(
            "making shared mount",
            NETNS_RUN_DIR,
            &NsLabel::current(),
        )(errno)),
    }
}

fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

impl NetNs {
    /// Creates a named namespace like `ip netns add NAME` and returns it open.
    ///
    /// Fails with [`Error::is_exists`] when the name is taken.
    pub fn create(name: &str) -> Result<Self> {
        validate_name(name)?;
        prepare_run_dir()?;
        let path = netns_path(name);
        let label = NsLabel::named(name);
        let fd = nix::fcntl::open(
            &path,
            OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys_err(
            "creating network namespace",
            name,
            &NsLabel::current(),
        ))?;
        drop(fd);

        // A fresh thread unshares into a new namespace and pins it with a bind mount of its own
        // namespace file; then the thread ends and the caller's thread never moved.
        let bind = thread::scope(|scope| {
            let worker = thread::Builder::new()
                .name("netns-create".into())
                .spawn_scoped(scope, || -> Result<()> {
                    nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(sys_err(
                        "unsharing network namespace for",
                        name,
                        &NsLabel::current(),
                    ))?;
                    nix::mount::mount(
                        Some(THREAD_SELF_NETNS),
                        &path,
                        Some("none"),
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .map_err(sys_err(
                        "bind-mounting network namespace to",
                        path.display().to_string(),
                        &NsLabel::current(),
                    ))
                })
                .map_err(io_err(
                    "spawning a thread to create network namespace",
                    name,
                ))?;
            match worker.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        });
        if let Err(err) = bind {
            let _ = fs::remove_file(&path);
            return Err(err);
        }
        tracing::debug!(netns = name, "created network namespace");
        let file = File::open(&path).map_err(io_err(
            "opening network namespace",
            path.display().to_string(),
        ))?;
        Ok(Self {
            name: Some(name.to_owned()),
            path,
            file,
            label,
        })
    }

    /// Deletes a named namespace like `ip netns delete NAME`: detaches the bind mount and
    /// removes the file. The namespace itself goes away once nothing holds it any more (open
    /// [`NetNs`] handles, netlink sockets, processes inside).
    ///
    /// Fails with [`Error::is_not_found`] when there is no such namespace.
    pub fn delete(name: &str) -> Result<()> {
        validate_name(name)?;
        let path = netns_path(name);
        match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point (a half-made namespace); remove the file anyway.
            Ok(()) | Err(Errno::EINVAL) => {}
            Err(Errno::ENOENT) => {
                return Err(Error::NotFound {
                    kind: "network namespace",
                    name: name.to_owned(),
                    netns: NsLabel::current(),
                });
            }
            Err(errno) => {
                return Err(sys_err(
                    "unmounting network namespace",
                    path.display().to_string(),
                    &NsLabel::current(),
                )(errno));
            }
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    kind: "network namespace",
                    name: name.to_owned(),
                    netns: NsLabel::current(),
                });
            }
            Err(err) => {
                return Err(io_err(
                    "removing network namespace file",
                    path.display().to_string(),
                )(err));
            }
        }
        tracing::debug!(netns = name, "deleted network namespace");
        Ok(())
    }

    /// Whether a named namespace exists (its file under [`NETNS_RUN_DIR`] does).
    pub fn exists(name: &str) -> bool {
        validate_name(name).is_ok() && netns_path(name).exists()
    }

    /// The names of all named namespaces, sorted.
    pub fn list() -> Result<Vec<String>> {
        let entries = match fs::read_dir(NETNS_RUN_DIR) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(io_err("listing", NETNS_RUN_DIR)(err)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("listing", NETNS_RUN_DIR))?;
            if entry.file_type().is_ok_and(|t| t.is_file())
                && let Some(name) = entry.file_name().to_str()
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Opens a named namespace. Fails with [`Error::is_not_found`] when it does not exist.
    pub fn open(name: &str) -> Result<Self> {
        validate_name(name)?;
        let mut ns = Self::open_path(netns_path(name)).map_err(|err| match err {
            err if err.is_not_found() => Error::NotFound {
                kind: "network namespace",
                name: name.to_owned(),
                netns: NsLabel::current(),
            },
            err => err,
        })?;
        ns.name = Some(name.to_owned());
        ns.label = NsLabel::named(name);
        Ok(ns)
    }

    /// Opens a namespace by path: `/run/netns/NAME`, `/proc/PID/ns/net`, or a CNI_NETNS path.
    pub fn open_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let file = File::open(path).map_err(io_err("opening network namespace", shown.clone()))?;
        let fs_type = statfs::fstatfs(&file)
            .map_err(sys_err(
                "inspecting network namespace",
                shown.clone(),
                &NsLabel::current(),
            ))?
            .filesystem_type();
        if fs_type != statfs::NSFS_MAGIC {
            return Err(Error::Invalid {
                what: "network namespace path",
                value: shown,
                reason: "not a namespace file (nsfs); expected /run/netns/NAME or /proc/PID/ns/net",
            });
        }
        Ok(Self {
            name: None,
            label: NsLabel::named(&shown),
            path: path.to_owned(),
            file,
        })
    }

    /// The calling thread's current namespace (usually the host's), e.g. to move a link back.
    pub fn current() -> Result<Self> {
        let mut ns = Self::open_path(THREAD_SELF_NETNS)?;
        ns.label = NsLabel::current();
        Ok(ns)
    }

    /// The name, for namespaces created or opened by name.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The path the namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How errors name this namespace.
    pub fn label(&self) -> &NsLabel {
        &self.label
    }

    /// Another handle to the same namespace.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            name: self.name.clone(),
            path: self.path.clone(),
            file: self.file.try_clone().map_err(io_err(
                "duplicating namespace handle",
                self.path.display().to_string(),
            ))?,
            label: self.label.clone(),
        })
    }

    /// Moves the *calling* thread into this namespace. Private: callers use `run`/`spawn`.
    fn enter_this_thread(fd: BorrowedFd<'_>, label: &NsLabel, path: &Path) -> Result<()> {
        nix::sched::setns(fd, CloneFlags::CLONE_NEWNET).map_err(sys_err(
            "entering network namespace",
            path.display().to_string(),
            label,
        ))
    }

    /// Runs `f` on a dedicated OS thread inside this namespace and returns its result; the
    /// caller's thread never changes namespace. Sockets `f` creates belong to this namespace,
    /// and `/proc/sys/net` as `f` sees it is this namespace's. A panic in `f` is re-raised here.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        thread::scope(|scope| {
            let worker = thread::Builder::new()
                .name("netns-run".into())
                .spawn_scoped(scope, || {
                    Self::enter_this_thread(self.file.as_fd(), &self.label, &self.path)?;
                    Ok(f())
                })
                .map_err(io_err(
                    "spawning a thread for network namespace",
                    self.path.display().to_string(),
                ))?;
            match worker.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Like [`NetNs::run`] but detached: starts `f` on a new OS thread inside this namespace
    /// (for servers and other long-running work) and returns its join handle.
    pub fn spawn<F, R>(&self, f: F) -> Result<thread::JoinHandle<Result<R>>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let ns = self.try_clone()?;
        thread::Builder::new()
            .name("netns-spawn".into())
            .spawn(move || {
                Self::enter_this_thread(ns.file.as_fd(), &ns.label, &ns.path)?;
                drop(ns);
                Ok(f())
            })
            .map_err(io_err(
                "spawning a thread for network namespace",
                self.path.display().to_string(),
            ))
    }

    /// A netlink connection inside this namespace: the socket is opened on a thread that
    /// entered the namespace, so every request made through it acts here. Must be called
    /// within a tokio runtime, which drives the connection.
    pub fn netlink(&self) -> Result<Netlink> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime {
            op: "opening a netlink connection",
        })?;
        let (connection, handle, _messages) = self
            .run(move || {
                let _entered = runtime.enter();
                rtnetlink::new_connection()
            })?
            .map_err(|source| Error::Io {
                op: "opening netlink socket",
                object: "NETLINK_ROUTE".into(),
                netns: self.label.clone(),
                source,
            })?;
        Ok(Netlink::from_parts(connection, handle, self.label.clone()))
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for NetNs {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_before_touching_anything() {
        for bad in ["", ".", "..", "a/b", &"x".repeat(256)] {
            let err = NetNs::create(bad).expect_err(bad);
            assert!(matches!(err, Error::Invalid { .. }), "{bad:?}: {err}");
        }
        assert!(!NetNs::exists("a/b"));
        assert!(validate_name(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn open_path_refuses_non_namespace_files() {
        let err = NetNs::open_path("/proc/self/status").expect_err("not nsfs");
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
    }

    #[test]
    fn current_namespace_opens_and_runs() {
        let ns = NetNs::current().expect("open own netns");
        assert_eq!(ns.label().name(), None);
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping the setns half: setns() needs CAP_SYS_ADMIN");
            return;
        }
        assert_eq!(ns.run(|| 7).expect("setns into own namespace"), 7);
        let err = std::panic::catch_unwind(|| ns.run(|| panic!("boom")));
        assert!(err.is_err(), "a panic inside run() reaches the caller");
    }
}
