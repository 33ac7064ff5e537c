//! SIGTERM from the CodeDeploy agent (hook timeout), SIGINT and SIGHUP from an ssh session:
//! stop at once with a clear last line, except inside a critical section (the switch, the
//! start of the app and its record), which finishes first and then says how it ended.

use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicUsize, Ordering};

use nix::libc;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// The signals that end a hook early; inside a critical section they are deferred.
const STOPPING: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

static IN_CRITICAL: AtomicI32 = AtomicI32::new(0);
/// The signal that arrived inside a critical section (0: none).
static PENDING: AtomicI32 = AtomicI32::new(0);
static HOOK: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static HOOK_LEN: AtomicUsize = AtomicUsize::new(0);

/// Exit code after SIGTERM (128 + 15, as a shell reports it).
pub const TERMINATED: u8 = 143;

/// 128 + the signal number, as a shell reports a process ended by it.
fn exit_code(signal: i32) -> i32 {
    128 + signal
}

fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "SIGTERM",
    }
}

fn cause(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => " (the CodeDeploy hook timeout?)",
        libc::SIGHUP => " (the terminal or ssh session closed?)",
        _ => "",
    }
}

fn write_raw(bytes: &[u8]) {
    // SAFETY: write(2) is async-signal-safe; its result is ignored because stderr may
    // already be closed.
    unsafe {
        libc::write(2, bytes.as_ptr() as *const libc::c_void, bytes.len());
    }
}

/// Writes `portswap <hook>: FAILED (exit N): stopped by SIG...` using only async-signal-safe
/// calls (no allocation).
fn write_stopped_verdict(signal: i32) {
    write_raw(b"portswap ");
    let ptr = HOOK.load(Ordering::SeqCst);
    if !ptr.is_null() {
        // SAFETY: a leaked, immutable buffer of HOOK_LEN bytes.
        write_raw(unsafe { std::slice::from_raw_parts(ptr, HOOK_LEN.load(Ordering::SeqCst)) });
    }
    let code = exit_code(signal);
    let digits = [
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ];
    write_raw(b": FAILED (exit ");
    write_raw(&digits);
    write_raw(b"): stopped by ");
    write_raw(name(signal).as_bytes());
    write_raw(cause(signal).as_bytes());
    write_raw(b"; the live app was not touched\n");
}

extern "C" fn on_signal(signal: libc::c_int) {
    if IN_CRITICAL.load(Ordering::SeqCst) > 0 {
        let _ = PENDING.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
        return;
    }
    write_stopped_verdict(signal);
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(exit_code(signal)) }
}

/// Installs the handler for SIGTERM, SIGINT and SIGHUP of hook `hook`.
pub fn install(hook: &'static str) {
    HOOK_LEN.store(hook.len(), Ordering::SeqCst);
    HOOK.store(hook.as_ptr() as *mut u8, Ordering::SeqCst);
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in STOPPING {
        // SAFETY: the handler only touches atomics and calls async-signal-safe functions.
        if let Err(e) = unsafe { sigaction(signal, &action) } {
            log::warn!("cannot install the {signal} handler: {e}");
        }
    }
}

/// The name of the stopping signal that arrived inside the current critical section, if one
/// did: a long critical step (the watch after a switch, the copy of a large artifact) asks
/// between its steps and ends early in a consistent state.
pub fn pending() -> Option<&'static str> {
    match PENDING.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(name(signal)),
    }
}

/// Runs `work` with SIGTERM, SIGINT and SIGHUP deferred; one that arrived meanwhile ends the
/// process right after, its verdict saying what the completed step did (`outcome`).
pub fn critical_then<T>(work: impl FnOnce() -> T, outcome: impl FnOnce(&T) -> String) -> T {
    IN_CRITICAL.fetch_add(1, Ordering::SeqCst);
    let result = work();
    IN_CRITICAL.fetch_sub(1, Ordering::SeqCst);
    let signal = PENDING.load(Ordering::SeqCst);
    if signal != 0 && IN_CRITICAL.load(Ordering::SeqCst) == 0 {
        let hook = {
            let ptr = HOOK.load(Ordering::SeqCst);
            if ptr.is_null() {
                ""
            } else {
                // SAFETY: a leaked &'static str stored by install().
                unsafe {
                    std::str::from_utf8_unchecked(std::slice::from_raw_parts(
                        ptr,
                        HOOK_LEN.load(Ordering::SeqCst),
                    ))
                }
            }
        };
        log::error!(
            "{} arrived during a step that must not be cut short; that step ran to its end",
            name(signal)
        );
        // The verdict line, written as the handler writes its own (stderr may be closed).
        let line = format!(
            "portswap {hook}: FAILED (exit {}): stopped by {}{} once its current step ended: {}\n",
            exit_code(signal),
            name(signal),
            cause(signal),
            outcome(&result)
        );
        write_raw(line.as_bytes());
        std::process::exit(exit_code(signal));
    }
    result
}

/// Runs `work` with SIGTERM, SIGINT and SIGHUP deferred; one that arrived meanwhile ends the
/// process right after, saying the live app was not touched.
pub fn critical<T>(work: impl FnOnce() -> T) -> T {
    critical_then(work, |_| "the live app was not touched".to_string())
}
