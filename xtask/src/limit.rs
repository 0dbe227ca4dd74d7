//! Running a command under a wall-clock limit.
//!
//! cargo-nextest limits every test it runs (`.config/nextest.toml`). What it
//! does not run, doc tests and the simulator binary, runs through
//! [`run_within`] instead: the command gets its own process group, and once
//! the limit has passed the whole group gets SIGTERM, then SIGKILL after a
//! grace period, so grandchildren (rustdoc's doc-test binaries under cargo)
//! die with it and nothing keeps running after the stage has failed.
//!
//! A process group of its own no longer receives the terminal's Ctrl-C, so
//! while it waits [`run_within`] catches SIGINT, SIGTERM and SIGHUP itself
//! and passes them on to the group; the caller then stops (see
//! [`Outcome::Interrupted`]). Unix only, like the rest of the workspace.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// How long a terminated command may take to exit before SIGKILL.
pub const GRACE: Duration = Duration::from_secs(10);

/// How often the child is polled; bounds how late a limit or a forwarded
/// signal takes effect.
const POLL: Duration = Duration::from_millis(50);

/// How a command run by [`run_within`] ended.
#[derive(Debug)]
pub enum Outcome {
    /// It exited by itself within the limit.
    Exited(ExitStatus),
    /// It ran past the limit and was killed, with its process group.
    TimedOut,
    /// The user interrupted xtask with this signal, which was passed on to
    /// the command; the caller should stop rather than go on to the next
    /// stage.
    Interrupted(i32),
}

/// The last SIGINT/SIGTERM/SIGHUP received while a command runs (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn remember_signal(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    RECEIVED.store(signal, Ordering::SeqCst);
}

const FORWARDED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Catches the forwarded signals while alive and restores the previous
/// dispositions when dropped.
struct SignalCatcher {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl SignalCatcher {
    fn install() -> io::Result<Self> {
        RECEIVED.store(0, Ordering::SeqCst);
        let mut previous = Vec::new();
        for signal in FORWARDED {
            // SAFETY: `action` is fully initialised (zeroed, then the handler
            // and an empty mask set) before sigaction reads it, and `old` is a
            // valid place for sigaction to write the previous disposition.
            // The handler only performs an atomic store.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = remember_signal as extern "C" fn(libc::c_int) as usize;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, &action, &mut old) != 0 {
                    return Err(io::Error::last_os_error());
                }
                previous.push((signal, old));
            }
        }
        Ok(SignalCatcher { previous })
    }
}

impl Drop for SignalCatcher {
    fn drop(&mut self) {
        for (signal, old) in &self.previous {
            // SAFETY: `old` is the disposition sigaction returned for `signal`.
            unsafe {
                libc::sigaction(*signal, old, std::ptr::null_mut());
            }
        }
    }
}

/// Sends `signal` to every process in the group `pgid`. A group that is
/// already gone (ESRCH) is fine.
fn signal_group(pgid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; a negative pid names
    // the process group, which is the one `run_within` created.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Runs `cmd` (standard input closed) in a new process group and waits at
/// most `limit` for it; past the limit the group gets SIGTERM, and SIGKILL
/// `grace` later.
pub fn run_within(cmd: &mut Command, limit: Duration, grace: Duration) -> io::Result<Outcome> {
    let catcher = SignalCatcher::install()?;
    let mut child = cmd.stdin(Stdio::null()).process_group(0).spawn()?;
    let pgid = child.id() as libc::pid_t;
    let start = Instant::now();
    // When SIGTERM went to the group, and why.
    let mut terminating: Option<(Instant, Option<i32>)> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            drop(catcher);
            return Ok(match terminating {
                None => Outcome::Exited(status),
                Some((_, Some(signal))) => Outcome::Interrupted(signal),
                Some((_, None)) => {
                    // Stragglers that outlived the group leader.
                    signal_group(pgid, libc::SIGKILL);
                    Outcome::TimedOut
                }
            });
        }
        let received = RECEIVED.swap(0, Ordering::SeqCst);
        if received != 0 {
            signal_group(pgid, received);
            terminating = Some((Instant::now(), Some(received)));
        } else if terminating.is_none() && start.elapsed() >= limit {
            signal_group(pgid, libc::SIGTERM);
            terminating = Some((Instant::now(), None));
        }
        if let Some((since, _)) = terminating {
            if since.elapsed() >= grace {
                signal_group(pgid, libc::SIGKILL);
            }
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn a_command_within_its_limit_reports_its_exit_status() {
        let ok = run_within(&mut sh("exit 0"), Duration::from_secs(30), GRACE).unwrap();
        assert!(matches!(ok, Outcome::Exited(s) if s.success()), "{ok:?}");
        let failed = run_within(&mut sh("exit 3"), Duration::from_secs(30), GRACE).unwrap();
        assert!(
            matches!(failed, Outcome::Exited(s) if s.code() == Some(3)),
            "{failed:?}"
        );
    }

    #[test]
    fn a_command_past_its_limit_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        // The shell starts a grandchild that would outlive it, records its
        // pid, and waits: the whole group must die at the limit.
        let script = format!("sleep 600 & echo $! > {}; wait", pid_file.display());
        let start = Instant::now();
        let outcome = run_within(
            &mut sh(&script),
            Duration::from_millis(300),
            Duration::from_secs(2),
        )
        .unwrap();
        let took = start.elapsed();
        assert!(matches!(outcome, Outcome::TimedOut), "{outcome:?}");
        assert!(
            took >= Duration::from_millis(300),
            "stopped early: {took:?}"
        );
        assert!(
            took < Duration::from_secs(20),
            "not stopped in time: {took:?}"
        );
        let pid: libc::pid_t = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild is not our child, so it is reaped by init; poll
        // until it has gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        // SAFETY: signal 0 only checks that the process exists.
        while unsafe { libc::kill(pid, 0) } == 0 {
            assert!(
                Instant::now() < deadline,
                "grandchild {pid} survived the limit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_command_ignoring_sigterm_is_killed_after_the_grace_period() {
        let start = Instant::now();
        let outcome = run_within(
            &mut sh("trap '' TERM; while :; do sleep 1; done"),
            Duration::from_millis(200),
            Duration::from_millis(500),
        )
        .unwrap();
        assert!(matches!(outcome, Outcome::TimedOut), "{outcome:?}");
        assert!(
            start.elapsed() >= Duration::from_millis(700),
            "{:?}",
            start.elapsed()
        );
    }
}
