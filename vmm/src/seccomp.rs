//! Per-thread seccomp filters (seccompiler): each kind of VMM thread may
//! make only the system calls it needs. A call outside the filter raises
//! SIGSYS; our handler writes one clear line naming the call and ends the
//! process, so a sandbox violation is never silent.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

/// Whether filters are installed (`--seccomp off` turns them off).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns filtering on or off for threads that start after this call.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Release);
}

/// The kinds of VMM threads, each with its own allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The control loop, which also (re)builds the VM on restarts.
    Control,
    /// A vCPU thread.
    Vcpu,
    /// The API server and its helper threads.
    Api,
    /// The console socket threads.
    Console,
    /// A device's I/O thread (queues, TAP, the block engine).
    Io,
}

/// Errors of installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be compiled.
    #[error("cannot build the seccomp filter: {0}")]
    Build(String),
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter: {0}")]
    Apply(String),
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// What every thread does: memory, locks, signals, time, exiting, plain I/O
/// on descriptors it already has.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fcntl,
    libc::SYS_ftruncate,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// Starting threads (Rust's std and tokio).
const THREADS: &[libc::c_long] = &[
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_prlimit64,
];

/// The control thread builds whole VMs again on a restart.
const CONTROL: &[libc::c_long] = &[
    libc::SYS_ioctl,
    libc::SYS_openat,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_tgkill,
    libc::SYS_rt_sigaction,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    // vCPU threads narrow their filter further as they start.
    libc::SYS_seccomp,
    // I/O threads and the block engine's workers start from here and
    // inherit this filter: it must allow what theirs does (IO), and the
    // control thread sets up each disk's io_uring.
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_fallocate,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    // Hot-adding a NIC brings its TAP up (SIOCSIFFLAGS on a socket).
    libc::SYS_socket,
];

/// A vCPU runs KVM_RUN and the devices' ioctls (irqfd writes are plain writes).
const VCPU: &[libc::c_long] = &[libc::SYS_ioctl];

/// The API server: tokio's reactor and the listening socket.
const API: &[libc::c_long] = &[
    libc::SYS_accept4,
    libc::SYS_epoll_create1,
    libc::SYS_eventfd2,
    libc::SYS_getsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
];

/// A device's I/O thread: the disk's data path (sync, hole punching, the
/// io_uring it submits to and reaps from) and the TAP (plain reads and
/// writes); interrupts are eventfd writes.
const IO: &[libc::c_long] = &[
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_fallocate,
    libc::SYS_io_uring_enter,
];

/// The console socket: accepting the one client.
const CONSOLE: &[libc::c_long] = &[libc::SYS_accept4, libc::SYS_accept];

/// The system calls a thread of `kind` may make.
pub fn allowed(kind: ThreadKind) -> Vec<libc::c_long> {
    let extra: &[&[libc::c_long]] = match kind {
        ThreadKind::Control => &[THREADS, CONTROL],
        ThreadKind::Vcpu => &[VCPU],
        // The VMM is jailed (set*id included) before any of these threads
        // start, so none of them needs the set*id calls glibc broadcasts.
        ThreadKind::Api => &[THREADS, API],
        ThreadKind::Console => &[THREADS, CONSOLE],
        ThreadKind::Io => &[IO],
    };
    let mut all: Vec<libc::c_long> = COMMON.to_vec();
    for list in extra {
        all.extend_from_slice(list);
    }
    all.sort_unstable();
    all.dedup();
    all
}

/// Compiles the filter for `kind`: allowed calls pass, anything else traps.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        allowed(kind).into_iter().map(|nr| (nr, vec![])).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| SeccompError::Build(e.to_string()))
}

/// Installs the filter for `kind` on the calling thread (and the threads it
/// starts later), when filtering is enabled.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    if !ENABLED.load(Ordering::Acquire) {
        return Ok(());
    }
    install_sigsys_handler()?;
    let program = filter(kind)?;
    seccompiler::apply_filter(&program).map_err(|e| SeccompError::Apply(e.to_string()))?;
    tracing::debug!(?kind, "seccomp filter installed");
    Ok(())
}

/// Writes "nubo-vmm: seccomp: blocked system call N; exiting" and ends the
/// process with status 159 (128 + SIGSYS). Only async-signal-safe calls.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; for
    // SIGSYS from seccomp, si_syscall sits at byte offset 24 (after
    // si_signo, si_errno, si_code, padding, si_call_addr).
    let nr = unsafe { *(info as *const u8).add(24).cast::<libc::c_int>() };
    let mut line = *b"nubo-vmm: seccomp: blocked system call           ; the VMM exits\n";
    let mut digits = [0u8; 10];
    let mut n = nr.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 || len == digits.len() {
            break;
        }
    }
    for i in 0..len {
        line[39 + i] = digits[len - 1 - i];
    }
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is ours.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), line.len());
        libc::_exit(159);
    }
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
        .map_err(|e| SeccompError::Handler(std::io::Error::from_raw_os_error(e.errno())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_and_differ() {
        for kind in [
            ThreadKind::Control,
            ThreadKind::Vcpu,
            ThreadKind::Api,
            ThreadKind::Console,
        ] {
            assert!(!filter(kind).unwrap().is_empty());
        }
        assert!(allowed(ThreadKind::Vcpu).contains(&libc::SYS_ioctl));
        assert!(!allowed(ThreadKind::Vcpu).contains(&libc::SYS_openat));
        assert!(!allowed(ThreadKind::Api).contains(&libc::SYS_ioctl));
        assert!(!allowed(ThreadKind::Api).contains(&libc::SYS_execve));
    }

    /// A blocked call in a filtered process ends it with status 159 and one
    /// line naming the call. Runs in a forked child so the test process
    /// stays unfiltered.
    #[test]
    fn a_blocked_call_ends_the_process_with_a_clear_line() {
        let mut fds = [0; 2];
        // SAFETY: pipe fills two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child only dup2s, installs the filter and makes system
        // calls before _exit; it never returns into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: in the child: redirect stderr to the pipe.
            unsafe { libc::dup2(fds[1], libc::STDERR_FILENO) };
            set_enabled(true);
            if apply(ThreadKind::Vcpu).is_err() {
                // SAFETY: leave the child without running destructors.
                unsafe { libc::_exit(1) };
            }
            // SAFETY: getuid is harmless; here it is outside the vCPU list.
            unsafe { libc::syscall(libc::SYS_getuid) };
            // SAFETY: only reached if the call was not blocked.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(fds[1]) };
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let mut buf = [0u8; 200];
        // SAFETY: reading into our buffer from the pipe's read end.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        let text = String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned();
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 159, "{text}");
        assert!(
            text.contains(&format!("blocked system call {}", libc::SYS_getuid)),
            "{text}"
        );
    }
}
