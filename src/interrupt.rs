//! SIGINT and SIGTERM for the commands that run many seeds (sweep, gate, shrink,
//! check-determinism): the signal only raises a flag; the command sees it between answers, stops
//! its workers, writes what finished into a summary marked `interrupted`, removes its scratch
//! folder and exits with [`EXIT_INTERRUPTED`].
//!
//! Workers run in a process group of their own, so a Ctrl-C at the terminal reaches the parent
//! alone and no worker dies half way through a run; the parent ends them.

use std::sync::atomic::{AtomicBool, Ordering};

/// Exit code of a command stopped by a signal (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: i32 = 130;

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    // Only an atomic store: anything more is not safe inside a signal handler.
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM raise the flag instead of ending the process.
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a handler that only stores an atomic; SA_RESTART keeps
        // the parent's reads of worker answers going.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// True once SIGINT or SIGTERM arrived.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
