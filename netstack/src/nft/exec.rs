//! Running `nft`: applying and deleting tables, listing nubo's tables with
//! their content hash, counting rules; in the host's network namespace or in
//! a named one (`/run/netns/NAME`, entered by the child before `exec`).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{
    check_identifier, Family, NftError, Table, HASH_COMMENT_PREFIX, META_CHAIN, TABLE_PREFIX,
};

/// One nubo table found in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Its family.
    pub family: Family,
    /// Its name (starts with `nubo_`).
    pub name: String,
    /// The content hash it was applied with ([`Table::hash`]); `None` for a
    /// table without one (not made by [`apply_tables`]).
    pub hash: Option<String>,
}

/// Where `nft` is: Debian's `/usr/sbin/nft`, else whatever `PATH` finds.
fn nft_program() -> &'static str {
    if Path::new("/usr/sbin/nft").exists() {
        "/usr/sbin/nft"
    } else {
        "nft"
    }
}

/// A namespace name as `ip netns` makes them: one path component.
fn check_ns(ns: &str) -> Result<(), NftError> {
    if ns.is_empty() || ns == "." || ns == ".." || ns.contains('/') || ns.contains('\0') {
        return Err(NftError::invalid(
            "namespace name",
            format!("{ns:?} is not a name under /run/netns"),
        ));
    }
    Ok(())
}

/// Makes `cmd`'s child enter the network namespace `/run/netns/NS` before
/// it execs. The returned file holds the namespace's descriptor: keep it
/// until the child is spawned.
fn enter_netns_before_exec(cmd: &mut Command, ns: &str) -> Result<File, NftError> {
    check_ns(ns)?;
    let file =
        File::open(Path::new("/run/netns").join(ns)).map_err(|source| NftError::Namespace {
            ns: ns.to_string(),
            source,
        })?;
    let fd = file.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it makes one `setns` system call
    // (async-signal-safe, no allocation, no lock) on `fd`, which stays open
    // in the child because the parent keeps `file` open until `spawn`
    // returns (the caller holds the returned File). It only changes the
    // child's own network namespace.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(file)
}

/// Runs `nft ARGS` (in `ns` if given), feeding `input` on stdin; returns
/// stdout, or the error with nft's stderr.
fn run_nft(ns: Option<&str>, args: &[&str], input: Option<&str>) -> Result<String, NftError> {
    let mut cmd = Command::new(nft_program());
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let ns_file = match ns {
        Some(ns) => Some(enter_netns_before_exec(&mut cmd, ns)?),
        None => None,
    };
    let spawned = cmd.spawn();
    drop(ns_file);
    let mut child = spawned.map_err(|e| match ns {
        Some(ns) if e.kind() != io::ErrorKind::NotFound => NftError::Namespace {
            ns: ns.to_string(),
            source: e,
        },
        _ => NftError::Spawn(e),
    })?;
    let output = std::thread::scope(|s| {
        let writer = child.stdin.take().map(|mut stdin| {
            let text = input.unwrap_or_default();
            // Dropping stdin at the end of the closure closes it (EOF for nft).
            s.spawn(move || stdin.write_all(text.as_bytes()))
        });
        let output = child.wait_with_output();
        let written = match writer {
            Some(w) => w
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("stdin writer panicked"))),
            None => Ok(()),
        };
        output.and_then(|o| written.map(|()| o))
    });
    let output = output.map_err(NftError::Spawn)?;
    if !output.status.success() {
        return Err(NftError::Failed {
            args: args.join(" "),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Replaces each of `tables` (create if missing, delete, define) in ONE
/// `nft -f -` transaction, in the namespace `ns` (`None`: the caller's).
/// Either all of them are in place afterwards, or none changed.
pub fn apply_tables(ns: Option<&str>, tables: &[Table]) -> Result<(), NftError> {
    if tables.is_empty() {
        return Ok(());
    }
    let text: String = tables.iter().map(Table::render).collect();
    tracing::debug!(
        ns = ns.unwrap_or("-"),
        tables = ?tables.iter().map(|t| format!("{} {} {}", t.family(), t.name(), t.hash())).collect::<Vec<_>>(),
        "nft: applying"
    );
    run_nft(ns, &["-f", "-"], Some(&text)).map(|_| ())
}

/// Checks `tables` with the kernel without applying anything (`nft -c`):
/// what [`apply_tables`] would say, minus the change.
pub fn check_tables(ns: Option<&str>, tables: &[Table]) -> Result<(), NftError> {
    let text: String = tables.iter().map(Table::render).collect();
    run_nft(ns, &["-c", "-f", "-"], Some(&text)).map(|_| ())
}

/// Deletes one table; a table that is not there is not an error.
pub fn delete_table(ns: Option<&str>, family: Family, name: &str) -> Result<(), NftError> {
    check_identifier("table name", name)?;
    let text = format!("table {family} {name} {{}}\ndelete table {family} {name}\n");
    tracing::debug!(ns = ns.unwrap_or("-"), %family, name, "nft: deleting table");
    run_nft(ns, &["-f", "-"], Some(&text)).map(|_| ())
}

/// The `nftables` array of `nft -j list ruleset`.
fn ruleset(ns: Option<&str>) -> Result<Vec<Value>, NftError> {
    let out = run_nft(ns, &["-j", "list", "ruleset"], None)?;
    let mut v: Value = serde_json::from_str(&out)?;
    match v.get_mut("nftables").map(Value::take) {
        Some(Value::Array(items)) => Ok(items),
        _ => Err(NftError::Json(serde_json::Error::io(io::Error::other(
            "no \"nftables\" array",
        )))),
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn hash_of(comment: Option<&str>) -> Option<String> {
    comment
        .and_then(|c| c.strip_prefix(HASH_COMMENT_PREFIX))
        .map(str::to_string)
}

/// Parses `nft -j list ruleset` output into nubo's tables.
fn parse_tables(items: &[Value]) -> Vec<TableInfo> {
    let mut tables: Vec<TableInfo> = Vec::new();
    for item in items {
        if let Some(t) = item.get("table") {
            let (Some(family), Some(name)) = (
                str_field(t, "family").and_then(Family::parse),
                str_field(t, "name"),
            ) else {
                continue;
            };
            if name.starts_with(TABLE_PREFIX) {
                tables.push(TableInfo {
                    family,
                    name: name.to_string(),
                    // Newer nft prints table comments; 1.0.6 does not.
                    hash: hash_of(str_field(t, "comment")),
                });
            }
        } else if let Some(r) = item.get("rule") {
            if str_field(r, "chain") != Some(META_CHAIN) {
                continue;
            }
            let Some(hash) = hash_of(str_field(r, "comment")) else {
                continue;
            };
            let family = str_field(r, "family").and_then(Family::parse);
            let table = str_field(r, "table");
            if let Some(t) = tables
                .iter_mut()
                .find(|t| Some(t.family) == family && Some(t.name.as_str()) == table)
            {
                t.hash = Some(hash);
            }
        }
    }
    tables
}

fn count_rules(items: &[Value]) -> usize {
    items
        .iter()
        .filter_map(|i| i.get("rule"))
        .filter(|r| {
            str_field(r, "table").is_some_and(|t| t.starts_with(TABLE_PREFIX))
                && str_field(r, "chain") != Some(META_CHAIN)
        })
        .count()
}

/// nubo's tables (named `nubo_*`) in namespace `ns`, with the hash each was
/// applied with.
/// Sorted by family and name (nft lists by handle, which a re-apply renews).
pub fn list_tables(ns: Option<&str>) -> Result<Vec<TableInfo>, NftError> {
    let mut tables = parse_tables(&ruleset(ns)?);
    tables.sort_by(|a, b| (a.family.as_str(), &a.name).cmp(&(b.family.as_str(), &b.name)));
    Ok(tables)
}

/// How many rules nubo's tables hold in namespace `ns` (the hash rules of
/// `nubo_meta` not counted).
pub fn rule_count(ns: Option<&str>) -> Result<usize, NftError> {
    Ok(count_rules(&ruleset(ns)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = r#"{"nftables": [
      {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
      {"table": {"family": "ip", "name": "nubo_router", "handle": 1}},
      {"table": {"family": "inet", "name": "other", "handle": 2}},
      {"table": {"family": "bridge", "name": "nubo_p_tapx", "handle": 3, "comment": "nubo-hash:00ff"}},
      {"chain": {"family": "ip", "table": "nubo_router", "name": "nubo_meta", "handle": 1}},
      {"rule": {"family": "ip", "table": "nubo_router", "chain": "nubo_meta", "handle": 2,
                "comment": "nubo-hash:0123456789abcdef", "expr": [{"return": null}]}},
      {"rule": {"family": "ip", "table": "nubo_router", "chain": "postrouting", "handle": 3,
                "expr": [{"masquerade": null}]}},
      {"rule": {"family": "inet", "table": "other", "chain": "c", "handle": 3, "expr": []}}
    ]}"#;

    #[test]
    fn parses_tables_hashes_and_rule_counts() {
        let mut v: Value = serde_json::from_str(LISTING).unwrap();
        let items = match v["nftables"].take() {
            Value::Array(a) => a,
            _ => unreachable!(),
        };
        assert_eq!(
            parse_tables(&items),
            vec![
                TableInfo {
                    family: Family::Ip,
                    name: "nubo_router".into(),
                    hash: Some("0123456789abcdef".into()),
                },
                TableInfo {
                    family: Family::Bridge,
                    name: "nubo_p_tapx".into(),
                    hash: Some("00ff".into()),
                },
            ]
        );
        assert_eq!(count_rules(&items), 1);
    }

    #[test]
    fn bad_namespace_names_are_errors() {
        for ns in ["", "..", "a/b", "."] {
            assert!(matches!(
                run_nft(Some(ns), &["--version"], None),
                Err(NftError::Invalid { .. })
            ));
        }
        assert!(matches!(
            delete_table(None, Family::Ip, "nubo_x; flush ruleset"),
            Err(NftError::Invalid { .. })
        ));
    }
}
