//! Where the guest's serial console goes besides stdio: a size-capped log
//! file, and a Unix socket that one client at a time can attach to
//! (`nubo-vmm console PATH`) and detach from while the guest keeps running.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use devices::serial::SerialDevice;

/// Default cap of a console log file.
pub const DEFAULT_LOG_CAP: u64 = 16 << 20;
/// How much recent output a newly attached console client gets first.
const HISTORY: usize = 64 << 10;

/// A log file that never grows past `cap` bytes: when full, the oldest half
/// is dropped and the newest half moved to the start.
pub struct CappedFile {
    file: File,
    len: u64,
    cap: u64,
}

impl CappedFile {
    /// Opens (appending to) `path`, capped at `cap` bytes (at least 4 KiB).
    pub fn open(path: &Path, cap: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        let mut capped = Self {
            file,
            len,
            cap: cap.max(4096),
        };
        if capped.len > capped.cap {
            capped.drop_oldest()?;
        }
        Ok(capped)
    }

    /// Keeps the newest half of the cap.
    fn drop_oldest(&mut self) -> std::io::Result<()> {
        let keep = (self.cap / 2).min(self.len);
        let mut tail = vec![0u8; keep as usize];
        self.file.read_exact_at(&mut tail, self.len - keep)?;
        self.file.set_len(0)?;
        self.file.write_all_at(&tail, 0)?;
        self.len = keep;
        Ok(())
    }
}

impl Write for CappedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let buf = &buf[buf.len().saturating_sub((self.cap / 2) as usize)..];
        if self.len + buf.len() as u64 > self.cap {
            self.drop_oldest()?;
        }
        self.file.write_all_at(buf, self.len)?;
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A console log shared across the guest's restarts (opened once, before
/// the VMM drops privileges).
#[derive(Clone)]
pub struct SharedLog(Arc<Mutex<CappedFile>>);

impl SharedLog {
    /// Opens the log at `path`, capped at `cap` bytes.
    pub fn open(path: &Path, cap: u64) -> std::io::Result<Self> {
        Ok(Self(Arc::new(Mutex::new(CappedFile::open(path, cap)?))))
    }
}

impl Write for SharedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Default)]
struct HubState {
    /// The bound socket until [`ConsoleHub::start`] accepts on it.
    listener: Option<(UnixListener, PathBuf)>,
    client: Option<UnixStream>,
    history: VecDeque<u8>,
    serial: Option<Arc<Mutex<SerialDevice>>>,
}

/// The console socket: keeps recent output, forwards output to the attached
/// client and the client's keystrokes to the guest's UART.
#[derive(Clone, Default)]
pub struct ConsoleHub {
    state: Arc<Mutex<HubState>>,
}

impl ConsoleHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds the console socket at `path` (mode 0600; a live one is
    /// refused, a stale one replaced). Clients are accepted
    /// once [`ConsoleHub::start`] runs, so that the thread that accepts them
    /// starts after the VMM is jailed.
    pub fn listen(path: &Path) -> Result<Self, crate::socket::SocketError> {
        let listener = crate::socket::bind(path, "console socket")?;
        let hub = Self::default();
        hub.lock().listener = Some((listener, path.to_path_buf()));
        Ok(hub)
    }

    /// Accepts clients in a thread of its own (once; later calls do nothing).
    pub fn start(&self) -> std::io::Result<()> {
        let Some((listener, path)) = self.lock().listener.take() else {
            return Ok(());
        };
        let accept_hub = self.clone();
        std::thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Console) {
                    tracing::error!(error = %e, "the console socket is off");
                    return;
                }
                for stream in listener.incoming() {
                    match stream {
                        Ok(stream) => accept_hub.attach(stream),
                        Err(e) => tracing::warn!(error = %e, socket = %path.display(), "console accept failed"),
                    }
                }
            })?;
        Ok(())
    }

    /// Makes `stream` the attached client (replacing any other) and starts
    /// reading its keystrokes.
    fn attach(&self, mut stream: UnixStream) {
        let reader = match stream.try_clone() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot attach a console client");
                return;
            }
        };
        {
            let mut state = self.lock();
            let (a, b) = state.history.as_slices();
            if stream
                .write_all(a)
                .and_then(|_| stream.write_all(b))
                .is_err()
            {
                return;
            }
            if let Some(old) = state.client.replace(stream) {
                let _ = old.shutdown(std::net::Shutdown::Both);
            }
        }
        tracing::info!("console client attached");
        let hub = self.clone();
        let spawned = std::thread::Builder::new()
            .name("console-in".into())
            .spawn(move || hub.read_input(reader));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot read console input");
        }
    }

    fn read_input(&self, mut reader: UnixStream) {
        let mut buf = [0u8; 256];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let serial = self.lock().serial.clone();
            if let Some(serial) = serial {
                let mut serial = serial.lock().unwrap_or_else(|e| e.into_inner());
                // The UART's FIFO is small; what does not fit is dropped, as on a real line.
                serial.enqueue_input(&buf[..n]);
            }
        }
        tracing::info!("console client detached");
    }

    /// Points keystrokes at the UART of the guest's current boot.
    pub fn set_serial(&self, serial: Arc<Mutex<SerialDevice>>) {
        self.lock().serial = Some(serial);
    }

    /// A writer for the UART's output.
    pub fn writer(&self) -> ConsoleWriter {
        ConsoleWriter { hub: self.clone() }
    }
}

/// The UART's output sink when the console is a socket.
pub struct ConsoleWriter {
    hub: ConsoleHub,
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut state = self.hub.lock();
        state.history.extend(buf);
        let excess = state.history.len().saturating_sub(HISTORY);
        state.history.drain(..excess);
        if let Some(client) = state.client.as_mut() {
            // A client that cannot keep up is dropped rather than stall the guest.
            if client.write_all(buf).is_err() {
                state.client = None;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Attaches this terminal to a console socket until the user types Ctrl-]
/// or the VMM goes away. The guest keeps running after a detach.
pub fn attach_terminal(path: &Path) -> std::io::Result<()> {
    const DETACH: u8 = 0x1d; // Ctrl-]
    let stream = UnixStream::connect(path)?;
    let mut from_vm = stream.try_clone()?;
    let mut to_vm = stream;
    let raw = RawTerminal::enter();
    eprint!("[attached to {}; Ctrl-] detaches]\r\n", path.display());
    let output = std::thread::spawn(move || {
        let mut out = std::io::stdout();
        let mut buf = [0u8; 4096];
        while let Ok(n) = from_vm.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                break;
            }
        }
    });
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 256];
    loop {
        let n = stdin.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Some(pos) = buf[..n].iter().position(|&b| b == DETACH) {
            to_vm.write_all(&buf[..pos])?;
            break;
        }
        if to_vm.write_all(&buf[..n]).is_err() || output.is_finished() {
            break;
        }
    }
    drop(raw);
    let _ = to_vm.shutdown(std::net::Shutdown::Both);
    eprintln!("\n[detached]");
    Ok(())
}

/// Puts the terminal in raw mode while alive (when stdin is a terminal).
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn enter() -> Self {
        // SAFETY: termios is plain data; tcgetattr fills it for fd 0 and
        // fails harmlessly when fd 0 is not a terminal.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
                return Self(None);
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) != 0 {
                return Self(None);
            }
            Self(Some(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = self.0 {
            // SAFETY: restores the attributes read from the same fd in `enter`.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_file_keeps_the_newest_bytes() {
        let path = std::env::temp_dir().join(format!("nubo-capped-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut f = CappedFile::open(&path, 4096).unwrap();
        for i in 0..10_000u32 {
            writeln!(f, "{i:05}").unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() <= 4096);
        assert!(text.ends_with("09999\n"));
        assert!(!text.contains("00001\n"));
        // Reopening an over-long file trims it too.
        drop(f);
        let f = CappedFile::open(&path, 4096).unwrap();
        assert!(f.len <= 4096);
        let _ = std::fs::remove_file(&path);
    }
}
