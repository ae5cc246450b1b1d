//! The error type of the netlink primitives.

use std::io;

use crate::netns::NetnsError;

/// Why a netlink operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused the request; `errno` is its (positive) error
    /// number (`EEXIST` = 17, `ENODEV` = 19, ...).
    #[error("{op}: {} (errno {errno})", io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// What was being done (`creating bridge brq0123`).
        op: String,
        /// The kernel's errno.
        errno: i32,
    },
    /// The kernel lacks a feature (`EOPNOTSUPP`, "Unknown device type");
    /// the text names it and where it comes from ("802.1Q VLAN (kernel
    /// module 8021q)").
    #[error("not supported by this kernel: {0}")]
    Unsupported(String),
    /// A link the operation needs does not exist.
    #[error("no such link {0:?}")]
    NoSuchLink(String),
    /// A bad argument (interface name, prefix length, VLAN id, ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A link exists with the name but is not what was asked (e.g. a veth
    /// where a bridge is wanted), and nubo will not replace it.
    #[error("{0}")]
    Conflict(String),
    /// Namespace handling failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// Setting up the netlink socket or its runtime failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The netlink library failed otherwise (unexpected or malformed
    /// message).
    #[error("{op}: {reason}")]
    Protocol {
        /// What was being done.
        op: String,
        /// The library's message.
        reason: String,
    },
}

impl Error {
    /// The kernel's errno, when the kernel refused the request (or a
    /// system call failed).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { errno, .. } => Some(*errno),
            Self::Io { source, .. } => source.raw_os_error(),
            Self::Netns(e) => e.errno(),
            _ => None,
        }
    }

    /// Maps an rtnetlink error of operation `op`.
    pub(crate) fn from_rtnl(op: impl Into<String>, e: rtnetlink::Error) -> Self {
        let op = op.into();
        match e {
            rtnetlink::Error::NetlinkError(msg) => {
                let raw = msg.raw_code();
                if raw == 0 {
                    Self::Protocol {
                        op,
                        reason: "netlink error message with code 0".into(),
                    }
                } else {
                    Self::Kernel {
                        op,
                        errno: raw.saturating_abs(),
                    }
                }
            }
            other => Self::Protocol {
                op,
                reason: other.to_string(),
            },
        }
    }

    /// As [`Error::from_rtnl`], for a create request: `EOPNOTSUPP` (what
    /// the kernel answers for an unknown link kind) becomes
    /// [`Error::Unsupported`] naming `feature`.
    pub(crate) fn from_rtnl_create(
        op: impl Into<String>,
        feature: &str,
        e: rtnetlink::Error,
    ) -> Self {
        match Self::from_rtnl(op, e) {
            Self::Kernel { errno, .. } if errno == libc::EOPNOTSUPP => {
                Self::Unsupported(feature.to_string())
            }
            other => other,
        }
    }
}

impl From<crate::Ipv4NetError> for Error {
    /// A bad prefix is a bad argument.
    fn from(e: crate::Ipv4NetError) -> Self {
        Self::Invalid(e.to_string())
    }
}

/// `Result` with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
