//! nftables for nubo's host networking: a port's security groups and
//! anti-spoofing ([`port_table`]), a router's SNAT and floating IPs
//! ([`router_table`]) and the host's masquerade for the one-host external
//! network ([`external_table`]).
//!
//! # How rules reach the kernel: `nft -f -` with a generated ruleset
//!
//! Each generator is a pure function that returns a [`Table`]: the text of
//! one nubo table. [`apply_tables`] feeds tables to `nft -f -` (Debian's
//! `nftables` package) in ONE transaction, each as
//!
//! ```text
//! table F N {}          # create it if missing, so that the delete cannot fail
//! delete table F N
//! table F N { ... }     # the whole new content
//! ```
//!
//! so a port's or router's rules are replaced atomically and are never half
//! applied (nft commits a file as one netlink batch, or nothing). The text is
//! readable (`nft list table F N` shows the same thing) and unit-tested. `nft`
//! runs directly ([`std::process::Command`], no shell); in a router's
//! namespace it is run after entering `/run/netns/NAME` (a `pre_exec`
//! `setns`, see `exec.rs`; the netlink module may grow the same helper).
//! [`check_tables`] asks the kernel about tables without applying them
//! (`nft -c`); [`delete_table`] is idempotent.
//!
//! # Telling an up-to-date table: the content hash
//!
//! Every table carries a hash of its content ([`Table::hash`]: SHA-256 of
//! family, name and body, 16 hex digits), twice: as the table's `comment`
//! (for people) and as the comment of the only rule of a chain `nubo_meta`
//! that nothing jumps to (`return comment "nubo-hash:HASH"`). The chain is
//! what [`list_tables`] reads: Debian 12's nft (1.0.6) prints rule comments
//! in `nft -j` output, but not table or chain comments. An agent compares
//! [`TableInfo::hash`] with [`Table::hash`] and applies only what differs, so
//! a second apply of the same rules changes nothing.
//!
//! # Families and hooks
//!
//! - Port filters: `table bridge nubo_p_<tap>` (one per port: deleting the
//!   port deletes exactly its table) on the bridge family's `forward` hook,
//!   plus `input`/`output` for frames between the port and the host itself
//!   (the DHCP server). Conntrack in the bridge family (`ct state`) needs
//!   `nf_conntrack_bridge` (kernel ≥ 5.3); without it the kernel refuses the
//!   table ("Protocol error"). Port security off: no table at all.
//!   Debian's cloud kernel (the testbed's L1) has the module; a kernel
//!   without it refuses exactly the `ct state` rules, which the integration
//!   test (`tests/nft_netns.rs`) checks before it skips loading the table.
//! - Router NAT: `table ip nubo_router` in the router's namespace.
//! - Host masquerade: `table ip nubo_external` in the host's namespace.

mod exec;
mod port;
mod router;
mod types;

use std::fmt;
use std::io;

use sha2::{Digest, Sha256};

pub use exec::{apply_tables, check_tables, delete_table, list_tables, rule_count, TableInfo};
pub use port::{port_table, port_table_name};
pub use router::{external_table, router_table, EXTERNAL_TABLE, ROUTER_TABLE};
pub use types::{
    Direction, ExternalNat, FilterRule, FloatingNat, Mac, PortFilter, Remote, RouterNat, L4,
};

/// Every table nubo owns is named with this prefix ([`list_tables`] and
/// [`rule_count`] look at these only).
pub const TABLE_PREFIX: &str = "nubo_";

/// The chain holding the content hash ([`Table::hash`]).
pub const META_CHAIN: &str = "nubo_meta";

/// The prefix of the hash rule's comment in [`META_CHAIN`].
pub const HASH_COMMENT_PREFIX: &str = "nubo-hash:";

/// What can go wrong generating or applying rules.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The input cannot be turned into rules (a bad name, range or prefix).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was wrong (an interface name, a rule, ...).
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The network namespace could not be opened or entered.
    #[error("network namespace {ns}: {source}")]
    Namespace {
        /// Its name (under `/run/netns`).
        ns: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `nft` could not be started or talked to.
    #[error("cannot run nft: {0}")]
    Spawn(#[source] io::Error),
    /// `nft` ran and failed; its stderr says why.
    #[error("nft {args} failed ({status}): {stderr}")]
    Failed {
        /// The arguments it ran with.
        args: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// `nft -j` printed something that is not the JSON expected.
    #[error("cannot parse nft's JSON output: {0}")]
    Json(#[from] serde_json::Error),
}

impl NftError {
    pub(crate) fn invalid(what: &'static str, reason: String) -> Self {
        NftError::Invalid { what, reason }
    }
}

/// An nftables address family nubo uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `bridge`: frames crossing a Linux bridge (port filters).
    Bridge,
    /// `ip`: IPv4 (NAT).
    Ip,
    /// `inet`: IPv4 and IPv6.
    Inet,
}

impl Family {
    /// nft's keyword for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Bridge => "bridge",
            Family::Ip => "ip",
            Family::Inet => "inet",
        }
    }

    /// From nft's keyword (`None` for families nubo does not use).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bridge" => Some(Family::Bridge),
            "ip" => Some(Family::Ip),
            "inet" => Some(Family::Inet),
            _ => None,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One generated nubo table: its family, name and body (sets and chains).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    family: Family,
    name: String,
    body: String,
}

impl Table {
    /// A table from its body (the sets and chains, without the hash, which
    /// is added when rendered). The name must be a valid nubo table name.
    pub fn new(family: Family, name: &str, body: String) -> Result<Self, NftError> {
        check_identifier("table name", name)?;
        if !name.starts_with(TABLE_PREFIX) {
            return Err(NftError::invalid(
                "table name",
                format!("{name:?} does not start with {TABLE_PREFIX}"),
            ));
        }
        Ok(Self {
            family,
            name: name.to_string(),
            body,
        })
    }

    /// Its family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its body: sets and chains, as generated.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The content hash: the first 16 hex digits of SHA-256 over family,
    /// name and body.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.family.as_str());
        h.update([0]);
        h.update(&self.name);
        h.update([0]);
        h.update(&self.body);
        hex::encode(&h.finalize()[..8])
    }

    /// The table's definition (`table F N { ... }`) with its hash.
    pub fn definition(&self) -> String {
        let hash = self.hash();
        format!(
            "table {f} {n} {{\n\tcomment \"{HASH_COMMENT_PREFIX}{hash}\"\n\n\
             \tchain {META_CHAIN} {{\n\t\treturn comment \"{HASH_COMMENT_PREFIX}{hash}\"\n\t}}\n\
             {body}}}\n",
            f = self.family,
            n = self.name,
            body = self.body,
        )
    }

    /// What [`apply_tables`] feeds nft for this table: create (if missing),
    /// delete, define; atomic within the transaction.
    pub fn render(&self) -> String {
        format!(
            "table {f} {n} {{}}\ndelete table {f} {n}\n{def}",
            f = self.family,
            n = self.name,
            def = self.definition(),
        )
    }
}

/// nft identifiers (table, chain, set names): a letter or `_`, then
/// letters, digits, `_`, `-` or `.`; at most 200 bytes.
pub(crate) fn check_identifier(what: &'static str, s: &str) -> Result<(), NftError> {
    let mut chars = s.chars();
    let ok_first = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let ok_rest = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok_first && ok_rest && s.len() <= 200 {
        Ok(())
    } else {
        Err(NftError::invalid(
            what,
            format!("{s:?} is not an nft identifier"),
        ))
    }
}

/// A Linux interface name nft can take in a quoted string: 1–15 bytes of
/// letters, digits, `_`, `-`, `.`.
pub(crate) fn check_ifname(s: &str) -> Result<(), NftError> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(NftError::invalid(
            "interface name",
            format!("{s:?}: 1-15 letters, digits, '_', '-' or '.'"),
        ))
    }
}

/// A comment nft accepts: printable ASCII without `"` or `\`, at most 100
/// bytes (nft allows 128); anything else is replaced by `_` and cut.
pub(crate) fn comment(s: &str) -> String {
    s.chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_replaces_the_table_atomically_and_carries_the_hash() {
        let t = Table::new(Family::Ip, "nubo_x", "\tchain c {\n\t}\n".into()).unwrap();
        let text = t.render();
        let hash = t.hash();
        assert_eq!(hash.len(), 16);
        assert_eq!(
            text,
            format!(
                "table ip nubo_x {{}}\ndelete table ip nubo_x\ntable ip nubo_x {{\n\
                 \tcomment \"nubo-hash:{hash}\"\n\n\tchain nubo_meta {{\n\
                 \t\treturn comment \"nubo-hash:{hash}\"\n\t}}\n\tchain c {{\n\t}}\n}}\n"
            )
        );
    }

    #[test]
    fn hash_depends_on_family_name_and_body() {
        let a = Table::new(Family::Ip, "nubo_x", "a".into()).unwrap();
        let b = Table::new(Family::Inet, "nubo_x", "a".into()).unwrap();
        let c = Table::new(Family::Ip, "nubo_y", "a".into()).unwrap();
        let d = Table::new(Family::Ip, "nubo_x", "b".into()).unwrap();
        let same = Table::new(Family::Ip, "nubo_x", "a".into()).unwrap();
        assert_eq!(a.hash(), same.hash());
        for other in [&b, &c, &d] {
            assert_ne!(a.hash(), other.hash());
        }
    }

    #[test]
    fn bad_names_are_errors() {
        assert!(Table::new(Family::Ip, "x", String::new()).is_err());
        assert!(Table::new(Family::Ip, "nubo_x; flush ruleset", String::new()).is_err());
        assert!(check_ifname("tap0123abcd-01").is_ok());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a23456789abcdef0").is_err());
        assert!(check_ifname("a\"b").is_err());
        assert_eq!(comment("a\"b\\c\nd é"), "a_b_c_d _");
    }
}
