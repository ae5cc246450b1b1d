//! The volume part of the CLI workflow (issue #12): Block Storage v3 through
//! the unmodified `openstack` client, volumes attached live to real guests
//! through nubo-vmm's PCI hot-plug, and boot from volume.
//!
//! The guests boot the test initramfs with `nubo.vols=1`: `nubo-volwatch`
//! (guest/volwatch.sh) prints a `NUBO-VOL <serial> ...` line when a disk
//! appears, grows or goes, checks the record a previous attach left on it
//! (generation and md5 of 1 MiB of random data) and writes the next one. So
//! a volume's data is followed across detach, re-attach to another server,
//! snapshots, server stop/start and a daemon kill -9 with checksums, without
//! logging in to a guest.
//!
//! Both backends: `file` (the default type) and, where the testbed's
//! volume-fixture made the volume group `nubo-vg` on a loop device, `lvm`.

use super::*;

/// What `nubo-volwatch` said about one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
enum VolEvent {
    Appeared,
    Blank,
    Found { gen: u32, ok: bool },
    Wrote { gen: u32 },
    Size(u64),
    Gone,
}

/// The `NUBO-VOL <serial> ...` events of a console, in order.
fn vol_events(console: &str, serial: &str) -> Vec<VolEvent> {
    let prefix = format!("NUBO-VOL {serial} ");
    console
        .lines()
        .filter_map(|l| l.split_once(&prefix).map(|(_, rest)| rest.trim()))
        .filter_map(|rest| {
            let get = |k: &str| {
                rest.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{k}=")))
                    .unwrap_or("")
                    .to_string()
            };
            let word = rest.split_whitespace().next().unwrap_or("");
            Some(match word {
                "blank" => VolEvent::Blank,
                "gone" => VolEvent::Gone,
                "found" => VolEvent::Found {
                    gen: get("gen").parse().ok()?,
                    ok: !get("md5").is_empty() && get("md5") == get("expect"),
                },
                "wrote" => VolEvent::Wrote {
                    gen: get("gen").parse().ok()?,
                },
                w if w.starts_with("dev=") => VolEvent::Appeared,
                w if w.starts_with("size=") => VolEvent::Size(get("size").parse().ok()?),
                _ => return None,
            })
        })
        .collect()
}

impl Ctx<'_> {
    fn volume_show(&self, who: Option<&Creds>, volume: &str) -> Result<Value, String> {
        self.tb.osc_json_as(who, &["volume", "show", volume])
    }

    /// Polls `volume show` until the status is one of `want`.
    fn wait_volume(&self, volume: &str, want: &[&str], limit: Duration) -> Result<Value, String> {
        let start = Instant::now();
        loop {
            let v = self.volume_show(None, volume)?;
            let st = field(&v, "status").to_string();
            if want.contains(&st.as_str()) {
                return Ok(v);
            }
            if st.starts_with("error") && !want.iter().any(|w| w.starts_with("error")) {
                return Err(format!(
                    "volume {volume} went to {st} (wanted {want:?}): {v}"
                ));
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "volume {volume}: not {want:?} within {} s; last: {v}",
                    limit.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Polls until `volume show` fails (the volume is gone).
    fn wait_volume_gone(&self, volume: &str, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        while self.volume_show(None, volume).is_ok() {
            if start.elapsed() > limit {
                return Err(format!(
                    "volume {volume} still there after {} s",
                    limit.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        Ok(())
    }

    fn wait_snapshot(&self, snap: &str, limit: Duration) -> Result<Value, String> {
        let start = Instant::now();
        loop {
            let v = self.tb.osc_json(&["volume", "snapshot", "show", snap])?;
            match field(&v, "status") {
                "available" => return Ok(v),
                "error" => return Err(format!("snapshot {snap} went to error: {v}")),
                _ if start.elapsed() > limit => {
                    return Err(format!("snapshot {snap} not available: {v}"))
                }
                _ => std::thread::sleep(Duration::from_secs(1)),
            }
        }
    }

    /// Creates a volume (extra `args` before the name) and waits until it
    /// is available; returns its id.
    fn make_volume(&self, name: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["volume", "create"];
        all.extend_from_slice(args);
        all.push(name);
        let v = self.tb.osc_json(&all)?;
        let id = field(&v, "id").to_string();
        ensure(!id.is_empty(), || format!("volume create {name}: {v}"))?;
        self.wait_volume(&id, &["available"], Duration::from_secs(300))?;
        Ok(id)
    }

    /// Waits until `nubo-volwatch` on `server` has said `n` things about
    /// the volume with `serial`; returns all it said.
    fn wait_vol_events(
        &self,
        server: &str,
        serial: &str,
        n: usize,
        limit: Duration,
    ) -> Result<Vec<VolEvent>, String> {
        self.wait_console(
            None,
            server,
            &format!("{n} NUBO-VOL lines for {serial}"),
            limit,
            |c| {
                let ev = vol_events(c, serial);
                (ev.len() >= n).then_some(ev)
            },
        )
    }

    /// Attaches `volume` to `server` (live when ACTIVE), waits for in-use
    /// and for the guest to have checked and rewritten it: returns the
    /// generation it found (0: blank) and the one it wrote.
    fn attach_and_check(
        &self,
        server: &str,
        volume: &str,
        serial: &str,
    ) -> Result<(u32, u32), String> {
        let before = vol_events(&self.console(None, server)?, serial).len();
        let start = Instant::now();
        self.tb.osc(&["server", "add", "volume", server, volume])?;
        self.wait_volume(volume, &["in-use"], Duration::from_secs(120))?;
        let ev = self.wait_vol_events(server, serial, before + 3, Duration::from_secs(120))?;
        progress(&format!(
            "{volume} on {server}: seen by the guest {} ms after `server add volume`",
            start.elapsed().as_millis()
        ));
        let new = &ev[before..];
        let found = match new.get(1) {
            Some(VolEvent::Blank) => 0,
            Some(VolEvent::Found { gen, ok: true }) => *gen,
            other => {
                return Err(format!(
                    "{server}: {volume} read back wrong: {other:?} (all: {new:?})"
                ))
            }
        };
        match new.get(2) {
            Some(VolEvent::Wrote { gen }) => Ok((found, *gen)),
            other => Err(format!(
                "{server}: {volume} not written: {other:?} (all: {new:?})"
            )),
        }
    }

    /// Detaches `volume` from a running `server`: available again, and the
    /// guest saw the disk go.
    fn detach_live(&self, server: &str, volume: &str, serial: &str) -> Result<(), String> {
        self.tb
            .osc(&["server", "remove", "volume", server, volume])?;
        self.wait_volume(volume, &["available"], Duration::from_secs(120))?;
        let gone = self.wait_console(
            None,
            server,
            "NUBO-VOL gone",
            Duration::from_secs(60),
            |c| (vol_events(c, serial).last() == Some(&VolEvent::Gone)).then_some(()),
        );
        gone.map_err(|e| format!("after `server remove volume`: {e}"))
    }
}

/// Cinder's default backend serial: the volume id's first 20 characters.
fn serial(id: &str) -> String {
    id.chars().take(20).collect()
}

/// Whether L1 has the volume group of the lvm backend.
fn have_lvm(tb: &Testbed) -> bool {
    tb.ctl("lvm vgs nubo-vg >/dev/null 2>&1").1 == 0
}

/// The volume steps.
pub(super) fn workflow(steps: &mut Steps, cx: &Ctx, tb: &Testbed) {
    let minute = Duration::from_secs(60);
    let img = cx.n("volimg");
    let lvm = have_lvm(tb);

    // --- the API without guests, per backend
    steps.run(tb, "vol-api", false, || {
        ensure_image(cx, &img)?;
        let list = tb.osc_json(&["volume", "type", "list"])?;
        ensure(names(&list).iter().any(|n| n == "__DEFAULT__"), || {
            format!("volume type list lacks __DEFAULT__: {list}")
        })?;
        let mut types = vec![None];
        if lvm {
            types.push(Some(ensure_lvm_type(cx)?));
        } else if in_ci() {
            return Err("CI: L1 has no volume group nubo-vg (volume-fixture.sh)".into());
        }
        for t in &types {
            let tag = t.as_deref().unwrap_or("file");
            let mut base = vec!["--size", "1"];
            if let Some(t) = t {
                base.extend(["--type", t.as_str()]);
            }
            let start = Instant::now();
            let a = cx.make_volume(&cx.n(&format!("va-{tag}")), &base)?;
            progress(&format!(
                "{tag}: empty 1 GiB volume available in {} ms (API, polled)",
                start.elapsed().as_millis()
            ));
            let list = tb.osc_json(&["volume", "list", "--long"])?;
            ensure(list.to_string().contains(&a), || {
                format!("volume list lacks {a}: {list}")
            })?;
            tb.osc(&["volume", "set", "--size", "2", &a])?;
            let v = cx.wait_volume(&a, &["available"], minute)?;
            ensure(v["size"] == 2, || format!("after volume set --size 2: {v}"))?;
            let s = cx.n(&format!("sa-{tag}"));
            tb.osc_json(&["volume", "snapshot", "create", "--volume", &a, &s])?;
            cx.wait_snapshot(&s, minute)?;
            let err = tb.osc(&["volume", "delete", &a]);
            ensure(err.is_err(), || {
                format!("deleting {a} with a snapshot worked")
            })?;
            let b = cx.make_volume(&cx.n(&format!("vb-{tag}")), &["--snapshot", &s])?;
            let c = cx.make_volume(&cx.n(&format!("vc-{tag}")), &["--source", &a])?;
            let start = Instant::now();
            let mut from_image = base.clone();
            from_image.extend(["--image", img.as_str()]);
            let i = cx.make_volume(&cx.n(&format!("vi-{tag}")), &from_image)?;
            progress(&format!(
                "{tag}: 1 GiB volume from a 1 MiB image in {} ms",
                start.elapsed().as_millis()
            ));
            let v = cx.volume_show(None, &i)?;
            ensure(
                v.to_string().contains("os_command_line")
                    && (v["bootable"] == true || v["bootable"] == "true"),
                || format!("volume from image lacks volume_image_metadata or bootable: {v}"),
            )?;
            if let Some(u1) = &cx.u1 {
                ensure(cx.volume_show(Some(u1), &a).is_err(), || {
                    format!("another project sees volume {a}")
                })?;
                let theirs = tb.osc_json_as(Some(u1), &["volume", "list"])?;
                ensure(!theirs.to_string().contains(&a), || {
                    format!("another project lists volume {a}: {theirs}")
                })?;
            }
            for v in [&b, &c, &i] {
                tb.osc(&["volume", "delete", v])?;
            }
            tb.osc(&["volume", "snapshot", "delete", &s])?;
            let start = Instant::now();
            loop {
                if tb.osc(&["volume", "delete", &a]).is_ok() {
                    break;
                }
                if start.elapsed() > minute {
                    return Err(format!("volume {a} not deletable after its snapshot went"));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            for v in [&a, &b, &c, &i] {
                cx.wait_volume_gone(v, minute)?;
            }
        }
        Ok(())
    });

    // --- live attach and detach, data followed across servers
    let (s1, s2) = (cx.n("vs1"), cx.n("vs2"));
    steps.run(tb, "vol-attach", false, || {
        ensure_image(cx, &img)?;
        for s in [&s1, &s2] {
            tb.osc_json(&[
                "server", "create", "--image", &img, "--flavor", "m1.tiny", "--wait", s,
            ])?;
        }
        for s in [&s1, &s2] {
            cx.wait_ready(s, 1, 3 * minute)?;
        }
        let d = cx.make_volume(&cx.n("vd"), &["--size", "1"])?;
        let sd = serial(&d);
        let (found, wrote) = cx.attach_and_check(&s1, &d, &sd)?;
        ensure((found, wrote) == (0, 1), || {
            format!("first attach: found {found}, wrote {wrote}")
        })?;
        let v = cx.volume_show(None, &d)?;
        let s1_id = field(&cx.server_show(None, &s1)?, "id").to_string();
        ensure(v.to_string().contains(&s1_id), || {
            format!("attachments lack {s1}: {v}")
        })?;
        cx.detach_live(&s1, &d, &sd)?;
        let snap = cx.n("sd");
        tb.osc_json(&["volume", "snapshot", "create", "--volume", &d, &snap])?;
        cx.wait_snapshot(&snap, minute)?;
        let (found, wrote) = cx.attach_and_check(&s2, &d, &sd)?;
        ensure((found, wrote) == (1, 2), || {
            format!("attach to {s2}: found {found}, wrote {wrote}")
        })?;

        // Extend while attached: the guest sees the new size.
        tb.osc(&["volume", "set", "--size", "2", &d])?;
        cx.wait_console(None, &s2, "NUBO-VOL size=2 GiB", 2 * minute, |c| {
            vol_events(c, &sd)
                .contains(&VolEvent::Size(2 << 30))
                .then_some(())
        })?;
        cx.detach_live(&s2, &d, &sd)?;

        // The snapshot holds the first generation.
        let e = cx.make_volume(&cx.n("ve"), &["--snapshot", &snap])?;
        let se = serial(&e);
        let (found, _) = cx.attach_and_check(&s1, &e, &se)?;
        ensure(found == 1, || {
            format!("volume from the snapshot: found generation {found}, not 1")
        })?;

        // Stop/start: plugged again at start, with what the guest wrote.
        tb.osc(&["server", "stop", &s1])?;
        cx.wait_status(None, &s1, &["SHUTOFF"], 2 * minute)?;
        ensure(
            field(&cx.volume_show(None, &e)?, "status") == "in-use",
            || "stopped server's volume not in-use".into(),
        )?;
        let before = vol_events(&cx.console(None, &s1)?, &se).len();
        tb.osc(&["server", "start", &s1])?;
        cx.wait_status(None, &s1, &["ACTIVE"], 2 * minute)?;
        let ev = cx.wait_vol_events(&s1, &se, before + 2, 3 * minute)?;
        ensure(
            ev[before..]
                .iter()
                .any(|e| matches!(e, VolEvent::Found { gen: 2, ok: true })),
            || format!("after server start: {:?}", &ev[before..]),
        )?;

        // Daemon kill -9 and restart: still attached, detach works.
        tb.restart_daemon_hard()?;
        let v = cx.wait_volume(&e, &["in-use"], 2 * minute)?;
        ensure(v.to_string().contains(&s1_id), || {
            format!("after restart: {v}")
        })?;
        cx.detach_live(&s1, &e, &se)?;

        // A server deleted with a volume attached leaves it available.
        let (found, _) = cx.attach_and_check(&s2, &e, &se)?;
        ensure(found >= 3, || {
            format!("after the daemon restart: found generation {found}")
        })?;
        tb.osc(&["server", "delete", "--wait", &s2])?;
        let v = cx.wait_volume(&e, &["available"], 2 * minute)?;
        ensure(
            v["attachments"].as_array().is_some_and(|a| a.is_empty()),
            || format!("after server delete: {v}"),
        )?;

        if lvm {
            let t = ensure_lvm_type(cx)?;
            let l = cx.make_volume(&cx.n("vl"), &["--size", "1", "--type", &t])?;
            let sl = serial(&l);
            let (found, _) = cx.attach_and_check(&s1, &l, &sl)?;
            ensure(found == 0, || {
                format!("a new lvm volume was not blank: {found}")
            })?;
            cx.detach_live(&s1, &l, &sl)?;
            let (found, _) = cx.attach_and_check(&s1, &l, &sl)?;
            ensure(found == 1, || {
                format!("lvm volume re-attached: found {found}, not 1")
            })?;
            cx.detach_live(&s1, &l, &sl)?;
            tb.osc(&["volume", "delete", &l])?;
        }
        for v in [&d, &e] {
            let _ = tb.osc(&["volume", "delete", v]);
        }
        let _ = tb.osc(&["volume", "snapshot", "delete", &snap]);
        Ok(())
    });

    // --- boot from volume
    steps.run(tb, "vol-boot", false, || {
        ensure_image(cx, &img)?;
        let b1 = cx.n("bfv1");
        let s = tb.osc_json(&[
            "server",
            "create",
            "--image",
            &img,
            "--boot-from-volume",
            "1",
            "--flavor",
            "m1.tiny",
            "--wait",
            &b1,
        ])?;
        ensure(field(&s, "status") == "ACTIVE", || {
            format!("boot from volume: {s}")
        })?;
        cx.wait_ready(&b1, 1, 3 * minute)?;
        let show = cx.server_show(None, &b1)?;
        ensure(show.to_string().contains("volumes_attached"), || {
            format!("server show: {show}")
        })?;
        // The root volume: kept or not as the CLI's mapping said; cleaned up.
        let roots = uuids_in(&show["volumes_attached"].to_string());
        tb.osc(&["server", "delete", "--wait", &b1])?;
        for r in &roots {
            if cx.wait_volume(r, &["available"], minute).is_ok() {
                tb.osc(&["volume", "delete", r])?;
            }
        }

        let r = cx.make_volume(&cx.n("vr"), &["--size", "1", "--image", &img, "--bootable"])?;
        let b2 = cx.n("bfv2");
        tb.osc_json(&[
            "server", "create", "--volume", &r, "--flavor", "m1.tiny", "--wait", &b2,
        ])?;
        cx.wait_ready(&b2, 1, 3 * minute)?;
        tb.osc(&["server", "delete", "--wait", &b2])?;
        cx.wait_volume(&r, &["available"], 2 * minute)
            .map_err(|e| {
                format!(
                    "the root volume did not survive its server (delete_on_termination false): {e}"
                )
            })?;
        let b3 = cx.n("bfv3");
        tb.osc_json(&[
            "server", "create", "--volume", &r, "--flavor", "m1.tiny", "--wait", &b3,
        ])?;
        cx.wait_ready(&b3, 1, 3 * minute)?;
        tb.osc(&["server", "delete", "--wait", &b3])?;
        cx.wait_volume(&r, &["available"], 2 * minute)?;
        tb.osc(&["volume", "delete", &r])?;
        Ok(())
    });

    for s in [&s1, &s2] {
        let _ = tb.osc_as(None, &["server", "delete", "--wait", s], 3 * minute);
    }
}

/// The UUIDs in a text (however the CLI printed a list of ids).
fn uuids_in(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let shape = |w: &[u8]| {
        w.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
    };
    (0..b.len().saturating_sub(35))
        .filter(|&i| shape(&b[i..i + 36]))
        .map(|i| text[i..i + 36].to_string())
        .collect()
}

/// The volume type of the lvm backend, made once.
fn ensure_lvm_type(cx: &Ctx) -> Result<String, String> {
    let t = cx.n("lvm");
    if cx.tb.osc_json(&["volume", "type", "show", &t]).is_err() {
        cx.tb.osc_json(&[
            "volume",
            "type",
            "create",
            "--property",
            "volume_backend_name=lvm",
            &t,
        ])?;
    }
    Ok(t)
}

/// Makes the image the volume guests boot, once.
fn ensure_image(cx: &Ctx, name: &str) -> Result<(), String> {
    if cx.tb.osc_json(&["image", "show", name]).is_ok() {
        return Ok(());
    }
    network::net_image(cx, name, "console=ttyS0 quiet nubo.then=halt nubo.vols=1")
}
