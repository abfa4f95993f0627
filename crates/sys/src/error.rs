//! The crate's error type: every failure names the operation, the object it acted on, the
//! network namespace (when not the caller's own) and the kernel's answer.

use std::{fmt, io, sync::Arc};

use nix::errno::Errno;

/// Where an operation ran, for messages: nothing for the caller's own namespace,
/// ` in netns NAME` otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NsLabel(pub Option<Arc<str>>);

impl NsLabel {
    /// The caller's own namespace (printed as nothing).
    pub const fn current() -> Self {
        Self(None)
    }

    /// A named (or path-identified) namespace.
    pub fn named(name: &str) -> Self {
        Self(Some(Arc::from(name)))
    }

    /// The namespace name, if any.
    pub fn name(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl fmt::Display for NsLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(name) => write!(f, " in netns {name}"),
            None => Ok(()),
        }
    }
}

/// The cause text of a netlink error: the errno text (`File exists (os error 17)`) when the
/// kernel answered with one, rtnetlink's own description otherwise.
fn netlink_cause(err: &rtnetlink::Error) -> String {
    match err {
        rtnetlink::Error::NetlinkError(msg) if msg.code.is_some() => msg.to_io().to_string(),
        other => other.to_string(),
    }
}

/// Errors from the kernel seam.
///
/// The message reads `OPERATION OBJECT [in netns NS]: CAUSE`, for example
/// `adding route 10.0.0.0/26 via 192.168.0.2 in netns sv-lab-n1: File exists (os error 17)`.
/// Use [`Error::is_exists`] and [`Error::is_not_found`] to make ADD and DEL idempotent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A netlink request was refused or could not be sent.
    #[error("{op} {object}{netns}: {}", netlink_cause(source))]
    Netlink {
        /// What was being done, e.g. `adding route`.
        op: &'static str,
        /// What it was done to, e.g. `10.0.0.0/26 via 192.168.0.2`.
        object: String,
        /// Where.
        netns: NsLabel,
        /// rtnetlink's error (carries the kernel's errno for refusals); boxed because it can
        /// hold a whole netlink message.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// A system call failed.
    #[error("{op} {object}{netns}: {}", io::Error::from(*source))]
    Sys {
        /// What was being done, e.g. `entering network namespace`.
        op: &'static str,
        /// What it was done to.
        object: String,
        /// Where.
        netns: NsLabel,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// A file operation failed (netns bind mounts, sysctls, netlink sockets).
    #[error("{op} {object}{netns}: {source}")]
    Io {
        /// What was being done, e.g. `writing sysctl`.
        op: &'static str,
        /// What it was done to, e.g. `net/ipv4/ip_forward`.
        object: String,
        /// Where.
        netns: NsLabel,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A looked-up object does not exist.
    #[error("{kind} {name} not found{netns}")]
    NotFound {
        /// What kind of object, e.g. `network namespace`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// Where it was looked for.
        netns: NsLabel,
    },
    /// An argument was refused before anything was changed.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// What the argument is, e.g. `interface name`.
        what: &'static str,
        /// The refused value.
        value: String,
        /// Why, and what to do instead.
        reason: &'static str,
    },
    /// Netlink handles need a tokio runtime to drive their connection.
    #[error("{op} needs a tokio runtime; call it from within one (e.g. #[tokio::main])")]
    NoRuntime {
        /// What was being done.
        op: &'static str,
    },
}

impl Error {
    /// The kernel's errno behind this error, when there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Netlink { source, .. } => match &**source {
                rtnetlink::Error::NetlinkError(msg) => {
                    msg.code.map(|code| Errno::from_raw(code.get().abs()))
                }
                _ => None,
            },
            Self::Sys { source, .. } => Some(*source),
            Self::Io { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }

    /// True when the object already exists (EEXIST): an idempotent ADD may treat this as done.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(Errno::EEXIST)
            || matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists)
    }

    /// True when the object does not exist: a link, namespace, route (ESRCH), address
    /// (EADDRNOTAVAIL), neighbour or file (ENOENT), device (ENODEV). An idempotent DEL may
    /// treat this as done.
    pub fn is_not_found(&self) -> bool {
        if matches!(self, Self::NotFound { .. }) {
            return true;
        }
        matches!(
            self.errno(),
            Some(Errno::ENOENT | Errno::ESRCH | Errno::ENODEV | Errno::EADDRNOTAVAIL)
        )
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::num::NonZeroI32;

    use rtnetlink::packet_core::ErrorMessage;

    use super::*;

    fn netlink_error(errno: i32) -> Error {
        let mut msg = ErrorMessage::default();
        msg.code = NonZeroI32::new(-errno);
        Error::Netlink {
            op: "adding route",
            object: "10.0.0.0/26 via 192.168.0.2".into(),
            netns: NsLabel::named("sv-lab-n1"),
            source: Box::new(rtnetlink::Error::NetlinkError(msg)),
        }
    }

    #[test]
    fn netlink_message_names_operation_object_netns_and_cause() {
        let err = netlink_error(libc::EEXIST);
        assert_eq!(
            err.to_string(),
            "adding route 10.0.0.0/26 via 192.168.0.2 in netns sv-lab-n1: File exists (os error 17)"
        );
        assert!(err.is_exists());
        assert!(!err.is_not_found());
    }

    #[test]
    fn not_found_errnos_are_classified() {
        for errno in [libc::ENOENT, libc::ESRCH, libc::ENODEV, libc::EADDRNOTAVAIL] {
            let err = netlink_error(errno);
            assert!(err.is_not_found(), "{err}");
            assert!(!err.is_exists(), "{err}");
        }
        assert!(!netlink_error(libc::EPERM).is_not_found());
        let err = Error::NotFound {
            kind: "network namespace",
            name: "x".into(),
            netns: NsLabel::current(),
        };
        assert!(err.is_not_found());
        assert_eq!(err.to_string(), "network namespace x not found");
    }

    #[test]
    fn sys_error_message() {
        let err = Error::Sys {
            op: "entering network namespace",
            object: "/run/netns/a".into(),
            netns: NsLabel::current(),
            source: Errno::EPERM,
        };
        assert_eq!(
            err.to_string(),
            "entering network namespace /run/netns/a: Operation not permitted (os error 1)"
        );
        assert_eq!(err.errno(), Some(Errno::EPERM));
    }
}
