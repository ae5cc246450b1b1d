//! [`Netlink`]: a blocking route-netlink handle bound to one network
//! namespace.
//!
//! It owns a private current-thread tokio runtime and an `rtnetlink`
//! connection whose socket was opened from a thread inside the namespace
//! (a netlink socket stays bound to the namespace it was created in). Every
//! method blocks on that runtime, so it may be called from any thread that
//! is not running async code: plain threads and `spawn_blocking` threads of
//! another runtime included. Calling it from inside an async task would
//! panic (tokio forbids nested `block_on`): use `spawn_blocking`. Drop it
//! outside async code too (it drops its runtime). Its socket keeps the
//! namespace alive after [`crate::netns::delete`] until it is dropped.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsFd;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::LinkMessage;

use super::error::{Error, Result};
use crate::netns;

/// A blocking netlink handle for one network namespace (see the module
/// docs). `Send + Sync`; methods take `&self`.
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
    namespace: Option<String>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Netlink {
    /// A handle for the calling thread's network namespace (the host's,
    /// for the agent).
    pub fn host() -> Result<Self> {
        Self::connect(None, None)
    }

    /// A handle for namespace `name` (`/run/netns/NAME`).
    pub fn in_namespace(name: &str) -> Result<Self> {
        let file = netns::open(name)?;
        Self::connect(Some(file), Some(name.to_string()))
    }

    fn connect(ns: Option<File>, namespace: Option<String>) -> Result<Self> {
        let label = namespace.clone();
        let build = move || -> Result<(tokio::runtime::Runtime, rtnetlink::Handle)> {
            if let Some(file) = &ns {
                netns::enter(file.as_fd()).map_err(|source| Error::Io {
                    op: format!("entering namespace {}", label.as_deref().unwrap_or("?")),
                    source,
                })?;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(|source| Error::Io {
                    op: "building the netlink runtime".into(),
                    source,
                })?;
            let (conn, handle, _) = {
                let _guard = rt.enter();
                rtnetlink::new_connection().map_err(|source| Error::Io {
                    op: "opening a route netlink socket".into(),
                    source,
                })?
            };
            rt.spawn(conn);
            Ok((rt, handle))
        };
        // A fresh thread: it may setns without affecting the caller, and it
        // is outside any runtime the caller may be in.
        let (rt, handle) = std::thread::spawn(build)
            .join()
            .map_err(|_| Error::Protocol {
                op: "opening a netlink handle".into(),
                reason: "the setup thread panicked".into(),
            })??;
        Ok(Self {
            rt,
            handle,
            namespace,
        })
    }

    /// The namespace this handle works in (`None`: the creator's).
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// Runs `f` on the handle's runtime, blocking the caller.
    pub(crate) fn block<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The rtnetlink handle (cheap to clone).
    pub(crate) fn rtnl(&self) -> rtnetlink::Handle {
        self.handle.clone()
    }

    /// The raw link message of `name`, `None` if there is no such link.
    pub(crate) fn link_message(&self, name: &str) -> Result<Option<LinkMessage>> {
        super::check_ifname(name)?;
        let req = self.handle.link().get().match_name(name.to_string());
        match self.block(req.execute().try_next()) {
            Ok(msg) => Ok(msg),
            Err(e) => match Error::from_rtnl(format!("getting link {name}"), e) {
                Error::Kernel { errno, .. } if errno == libc::ENODEV => Ok(None),
                other => Err(other),
            },
        }
    }

    /// The raw link message with index `index`, `None` if there is none.
    pub(crate) fn link_message_by_index(&self, index: u32) -> Result<Option<LinkMessage>> {
        let req = self.handle.link().get().match_index(index);
        match self.block(req.execute().try_next()) {
            Ok(msg) => Ok(msg),
            Err(e) => match Error::from_rtnl(format!("getting link #{index}"), e) {
                Error::Kernel { errno, .. } if errno == libc::ENODEV => Ok(None),
                other => Err(other),
            },
        }
    }

    /// The index of link `name`, or [`Error::NoSuchLink`].
    pub(crate) fn index_of(&self, name: &str) -> Result<u32> {
        self.link_message(name)?
            .map(|m| m.header.index)
            .ok_or_else(|| Error::NoSuchLink(name.to_string()))
    }
}

/// The agent shares one handle between threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Netlink>();
};
