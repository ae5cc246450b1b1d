//! The state directory's permissions: it holds password hashes (`nubo.db`),
//! tenants' private images and guests' disks, so only the daemon's user may
//! read it — directories 0700, files 0600, whatever the umask.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` (mode 0600) through a temporary file and a
/// rename, so a reader never sees half a file.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Sets the daemon's umask to 077, so every file it (and every VMM it
/// starts) creates from now on is private: SQLite's database, WAL and shared
/// memory files, image uploads, instance files.
pub fn restrict_umask() {
    // SAFETY: umask(2) only changes this process's file mode mask; it cannot
    // fail and touches no memory.
    unsafe { libc::umask(0o077) };
}

/// Creates the state directory (0700) if missing, then makes it and what it
/// holds private: every directory in it 0700 and every file 0600 (sockets
/// and other special files are left alone). Looser modes found — a state
/// directory created by hand, or by an older daemon — are fixed, each with a
/// warning in the log.
pub fn secure(state_dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)?;
    secure_tree(state_dir)
}

fn secure_tree(path: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    let want = if meta.is_dir() {
        0o700
    } else if meta.is_file() {
        0o600
    } else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & !want != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            fixed = format!("{:o}", mode & want),
            "state file readable by others: tightening its mode"
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & want))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            secure_tree(&entry?.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_modes_are_tightened_and_tight_ones_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = tmp.path().join("state");
        std::fs::create_dir_all(state.join("images")).expect("mkdir");
        std::fs::write(state.join("nubo.db"), b"x").expect("write");
        std::fs::write(state.join("images").join("img"), b"x").expect("write");
        std::fs::write(state.join("tight"), b"x").expect("write");
        for (p, m) in [
            (state.clone(), 0o755),
            (state.join("images"), 0o775),
            (state.join("nubo.db"), 0o644),
            (state.join("images").join("img"), 0o666),
            (state.join("tight"), 0o400),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).expect("chmod");
        }
        secure(&state).expect("secure");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("images")), 0o700);
        assert_eq!(mode(&state.join("nubo.db")), 0o600);
        assert_eq!(mode(&state.join("images").join("img")), 0o600);
        assert_eq!(mode(&state.join("tight")), 0o400, "tighter modes are kept");
    }
}
