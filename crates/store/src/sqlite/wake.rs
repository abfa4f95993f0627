//! Cross-process commit wake-ups for the sqlite store's watches.
//!
//! A watch in one process must learn of commits made by another process (the CLI writes, the
//! agent watches). sqlite itself offers no notification across processes, so:
//!
//! - every writer, after each commit, touches the timestamps of the database's WAL file
//!   ([`signal_commit`]; `utimensat` by path: no descriptor of sqlite's files is opened or
//!   closed here, which would drop sqlite's POSIX locks);
//! - a watcher holds an inotify watch on the database's directory ([`CommitWaker`]) and wakes
//!   on the touch (`IN_ATTRIB`), which comes strictly after the commit is visible, and on the
//!   WAL or database being created or replaced. Not on the WAL writes themselves
//!   (`IN_MODIFY`): a bulk write (an apply of 50,000 Services) writes ~4,300 frames, two
//!   `pwrite`s each, and every watching process woke for them over a thousand times, ~35 ms
//!   of CPU per watcher on the machine the writer was committing on, to find nothing
//!   committed yet (a WAL write comes before sqlite publishes the commit in the `-shm` index,
//!   so it never said more than "maybe soon"). Writers that are not Serval (e.g. the
//!   `sqlite3` shell) do not touch the WAL: the timed re-check below finds their commits;
//! - the caller keeps a slow timed re-check as a safety net (inotify unavailable, the queue
//!   overflowed, a writer on another host sharing a network filesystem).
//!
//! The directory is watched rather than the files so that a WAL file deleted and created
//! again (sqlite removes it when the last connection closes) is still followed.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// The WAL file of the database at `db` (`<db>-wal`, sqlite's naming).
pub(super) fn wal_path(db: &Path) -> PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// Tell other processes' watchers that a commit is visible: touch the WAL's timestamps.
/// Failure only costs latency (watchers fall back to their timed re-check), so it is logged
/// at debug level.
pub(super) fn signal_commit(wal: &Path) {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    if let Err(error) = utimensat(
        nix::fcntl::AT_FDCWD,
        wal,
        &TimeSpec::UTIME_NOW,
        &TimeSpec::UTIME_NOW,
        UtimensatFlags::FollowSymlink,
    ) {
        tracing::debug!(wal = %wal.display(), %error, "cannot signal a commit to other processes' watches");
    }
}

/// Why [`CommitWaker::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Woken {
    /// The database or its WAL changed (or events were lost): look for new commits.
    Changed,
    /// Nothing happened within the timeout.
    Timeout,
    /// The directory watch is gone (directory removed or unmounted): fall back to polling.
    Lost,
}

/// An inotify watch on the database's directory.
pub(super) struct CommitWaker {
    inotify: Inotify,
    /// The names in the directory whose changes mean "maybe a commit": the database, its WAL.
    names: [OsString; 2],
}

impl CommitWaker {
    pub(super) fn new(db: &Path) -> nix::Result<CommitWaker> {
        let dir = match db.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("/"),
        };
        let file = db.file_name().map(OsString::from).unwrap_or_default();
        let wal = wal_path(Path::new(&file)).into_os_string();
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(
            dir,
            AddWatchFlags::IN_ATTRIB
                | AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_CLOSE_WRITE,
        )?;
        Ok(CommitWaker {
            inotify,
            names: [file, wal],
        })
    }

    /// Block until the database or its WAL changes, or `timeout` passes.
    pub(super) fn wait(&mut self, timeout: Duration) -> nix::Result<Woken> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Woken::Timeout);
            }
            // Whole milliseconds, rounded up so that a sub-millisecond rest does not spin.
            let ms = u16::try_from(left.as_millis() + 1).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
            let mut woken = None;
            loop {
                let events = match self.inotify.read_events() {
                    Ok(events) => events,
                    Err(Errno::EAGAIN) => break,
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(e),
                };
                for ev in events {
                    if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                        return Ok(Woken::Lost);
                    }
                    let relevant = ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW)
                        || ev.name.as_ref().is_some_and(|n| self.names.contains(n));
                    if relevant {
                        woken = Some(Woken::Changed);
                    }
                }
            }
            if let Some(w) = woken {
                return Ok(w);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_path_appends_the_suffix() {
        assert_eq!(
            wal_path(Path::new("/a/b/store.db")),
            PathBuf::from("/a/b/store.db-wal")
        );
    }

    #[test]
    fn a_touch_of_the_wal_wakes_and_other_files_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("store.db");
        let wal = wal_path(&db);
        std::fs::write(&wal, b"").expect("create wal");
        let mut waker = CommitWaker::new(&db).expect("inotify");
        // Another file in the same directory is not a commit.
        std::fs::write(dir.path().join("other.log"), b"x").expect("other file");
        assert_eq!(
            waker.wait(Duration::from_millis(50)).expect("wait"),
            Woken::Timeout
        );
        signal_commit(&wal);
        // No timer decides this: the event is queued before the wait starts.
        assert_eq!(
            waker.wait(Duration::from_secs(3600)).expect("wait"),
            Woken::Changed
        );
    }
}
