//! SIGTERM from the CodeDeploy agent (hook timeout): stop at once with a clear last line,
//! except inside a critical section (the switch), which finishes first.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use nix::libc;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static IN_CRITICAL: AtomicBool = AtomicBool::new(false);
static PENDING: AtomicBool = AtomicBool::new(false);
static MESSAGE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static MESSAGE_LEN: AtomicUsize = AtomicUsize::new(0);

/// Exit code after SIGTERM (128 + 15, as a shell reports it).
pub const TERMINATED: u8 = 143;

fn write_message() {
    let ptr = MESSAGE.load(Ordering::SeqCst);
    if !ptr.is_null() {
        // SAFETY: the message is a leaked, immutable buffer; write(2) is async-signal-safe and
        // its result is ignored because stderr may already be closed.
        unsafe {
            libc::write(
                2,
                ptr as *const libc::c_void,
                MESSAGE_LEN.load(Ordering::SeqCst),
            );
        }
    }
}

extern "C" fn on_sigterm(_: libc::c_int) {
    if IN_CRITICAL.load(Ordering::SeqCst) {
        PENDING.store(true, Ordering::SeqCst);
        return;
    }
    write_message();
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(TERMINATED as libc::c_int) }
}

/// Installs the SIGTERM handler; `verdict` is the last line it prints.
pub fn install(verdict: String) {
    let bytes: &'static mut [u8] =
        Box::leak(format!("{verdict}\n").into_bytes().into_boxed_slice());
    MESSAGE_LEN.store(bytes.len(), Ordering::SeqCst);
    MESSAGE.store(bytes.as_mut_ptr(), Ordering::SeqCst);
    let action = SigAction::new(
        SigHandler::Handler(on_sigterm),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only touches atomics and calls async-signal-safe functions.
    if let Err(e) = unsafe { sigaction(Signal::SIGTERM, &action) } {
        log::warn!("cannot install the SIGTERM handler: {e}");
    }
}

/// Runs `work` with SIGTERM deferred; a SIGTERM that arrived meanwhile ends the process
/// right after, with the installed verdict.
pub fn critical<T>(work: impl FnOnce() -> T) -> T {
    IN_CRITICAL.store(true, Ordering::SeqCst);
    let result = work();
    IN_CRITICAL.store(false, Ordering::SeqCst);
    if PENDING.load(Ordering::SeqCst) {
        log::error!(
            "SIGTERM arrived during a step that must not be cut short; that step completed"
        );
        write_message();
        // SAFETY: plain process exit without unwinding.
        unsafe { libc::_exit(TERMINATED as libc::c_int) }
    }
    result
}
