//! Running the rclone sync as a child: its output folded into our log, SIGTERM/SIGINT
//! forwarded to it, and every child reaped (s3sync is PID 1 in its container).
//!
//! The main thread waits with `waitid(P_ALL, WNOWAIT)`: it learns which child ended
//! without reaping it, so it can first mark rclone as gone (under the lock the signal
//! forwarder holds while signalling) and only then reap it. A signal can therefore never
//! reach a process that reused rclone's PID. Any other child that ends (an orphan
//! re-parented to us as PID 1 or as child subreaper) is reaped and logged.
//!
//! Every child is started by [`supervise`]: it dies with s3sync (`PR_SET_PDEATHSIG`, so an
//! OOM kill or a node's SIGKILL of s3sync never leaves rclone copying and deleting on its
//! own) and leads its own process group, so a stop that runs out of grace kills rclone and
//! anything it started, and no grandchild holding rclone's pipes can stall the stop.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lifeboat::shutdown::{signal_name, Shutdown};

use crate::logfold::{self, Emit, Folded, Redactor};

/// How the child is stopped: the grace after SIGTERM before it is killed (`STOP_GRACE`;
/// Kubernetes waits terminationGracePeriodSeconds before its own SIGKILL), and the deadline of
/// the whole run (`SYNC_TIMEOUT`), after which it is stopped as if SIGTERM had come.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub grace: Duration,
    pub deadline: Option<Instant>,
}

/// How the child ended.
#[derive(Clone, Debug)]
pub struct Ended {
    /// The exit code, or 128 + signal number when it was killed by a signal.
    pub code: i32,
    /// The signal we forwarded to it, if we were asked to stop.
    pub stopped_by: Option<i32>,
    /// It was stopped because the deadline passed.
    pub timed_out: bool,
    /// What its output said.
    pub folded: Folded,
}

/// Asks the kernel to re-parent orphaned descendants to us (Linux), so they are reaped
/// even when s3sync is not PID 1. Failure is harmless and only logged.
pub fn become_subreaper() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            log::debug!(error:% = io::Error::last_os_error(); "cannot become child subreaper");
        }
    }
}

/// After the child has ended, how long its output may take to reach its end (EOF) before the
/// rest of its process group is killed, and again before the output is abandoned.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Makes the child of `cmd` die when s3sync dies, and lead its own process group.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends, so children must be
/// spawned from a thread that outlives them (the main thread, or one joined after the child).
/// If s3sync died between the fork and the `prctl`, the child would already be re-parented:
/// it checks `getppid()` against s3sync's PID and kills itself.
pub fn supervise(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid, setpgid, raise); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            #[cfg(target_os = "linux")]
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::raise(libc::SIGKILL);
            }
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `cmd` (made by `rclone::command`, so [`supervise`]d) to completion: output folded into the log, signals forwarded, children reaped.
pub fn run(mut cmd: Command, shutdown: &Shutdown, redactor: &Redactor, limits: Limits) -> io::Result<Ended> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let folded = Arc::new(Mutex::new(Folded::default()));
    let readers: Vec<_> = [
        child.stderr.take().map(|s| Box::new(s) as Box<dyn io::Read + Send>),
        child.stdout.take().map(|s| Box::new(s) as Box<dyn io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let folded = folded.clone();
        let redactor = redactor.clone();
        thread::spawn(move || logfold::fold(stream, &redactor, Emit::AsIs, &folded))
    })
    .collect();

    let alive = Arc::new(Mutex::new(true));
    let done = Arc::new(AtomicBool::new(false));
    let forwarded = Arc::new(Mutex::new(None));
    let timed_out = Arc::new(AtomicBool::new(false));
    {
        let (alive, done, forwarded, shutdown) = (alive.clone(), done.clone(), forwarded.clone(), shutdown.clone());
        let timed_out = timed_out.clone();
        // Not joined: it notices `done` within 100 ms and ends by itself. Once the child is
        // marked gone (before it is reaped) the forwarder neither signals nor records anything.
        thread::spawn(move || forward_signals(pid, &shutdown, &alive, &done, &forwarded, &timed_out, limits));
    }

    let status = reap_until(pid, &alive);
    done.store(true, Ordering::SeqCst);
    drain(pid, readers);
    reap_orphans();
    let status = status?;
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    };
    let stopped_by = *forwarded.lock().unwrap_or_else(|e| e.into_inner());
    let folded = folded.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(Ended {
        code,
        stopped_by,
        timed_out: timed_out.load(Ordering::SeqCst),
        folded,
    })
}

/// Waits for the output readers of the ended child `pid`; if something it started still holds
/// its pipes after [`DRAIN_GRACE`], kills the rest of its process group, and after another
/// grace leaves the readers behind (they end with the process).
fn drain(pid: libc::pid_t, readers: Vec<thread::JoinHandle<()>>) {
    let finished = |readers: &[thread::JoinHandle<()>]| readers.iter().all(|r| r.is_finished());
    let wait = |readers: &[thread::JoinHandle<()>]| {
        let start = Instant::now();
        while !finished(readers) && start.elapsed() < DRAIN_GRACE {
            thread::sleep(Duration::from_millis(10));
        }
        finished(readers)
    };
    if !wait(&readers) {
        log::warn!(pgid = pid; "rclone ended but processes it started still hold its output: killing its process group");
        // SAFETY: kill has no memory effects. The group is rclone's own (setpgid in the child);
        // its ID cannot be reused while a member is alive.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        if !wait(&readers) {
            log::warn!("rclone's output did not end: not waiting for it any longer");
            return;
        }
    }
    for r in readers {
        let _ = r.join();
    }
}

/// Waits for a stop request; passes it on to the child; kills the child if it has not
/// ended `limits.grace` later; does the same with SIGTERM when the deadline passes.
fn forward_signals(
    pid: libc::pid_t,
    shutdown: &Shutdown,
    alive: &Mutex<bool>,
    done: &AtomicBool,
    forwarded: &Mutex<Option<i32>>,
    timed_out: &AtomicBool,
    limits: Limits,
) {
    let signal = loop {
        if done.load(Ordering::SeqCst) {
            return;
        }
        if let Some(signal) = shutdown.wait_timeout(Duration::from_millis(100)) {
            break signal;
        }
        if limits.deadline.is_some_and(|d| Instant::now() >= d) {
            let alive = alive.lock().unwrap_or_else(|e| e.into_inner());
            if !*alive {
                return;
            }
            timed_out.store(true, Ordering::SeqCst);
            log::error!(pid = pid; "SYNC_TIMEOUT reached: stopping rclone");
            // SAFETY: kill has no memory effects; `pid` is our unreaped child (checked under the lock).
            unsafe { libc::kill(pid, libc::SIGTERM) };
            drop(alive);
            break 0;
        }
    };
    if signal != 0 {
        {
            let alive = alive.lock().unwrap_or_else(|e| e.into_inner());
            if !*alive {
                return;
            }
            log::warn!(signal = signal_name(signal), pid = pid; "stop requested: forwarding the signal to rclone and waiting for it");
            *forwarded.lock().unwrap_or_else(|e| e.into_inner()) = Some(signal);
            // SAFETY: kill has no memory effects; `pid` is our unreaped child (checked under the lock).
            unsafe { libc::kill(pid, signal) };
        }
    }
    let start = Instant::now();
    while start.elapsed() < limits.grace {
        if done.load(Ordering::SeqCst) {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let alive = alive.lock().unwrap_or_else(|e| e.into_inner());
    if *alive {
        log::error!(pid = pid, grace_s = limits.grace.as_secs_f64(); "rclone did not stop in time: killing it and its process group");
        // SAFETY: as above; the group is rclone's own and still has rclone in it.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

/// Reaps children until `pid` has ended; returns its raw wait status.
fn reap_until(pid: libc::pid_t, alive: &Mutex<bool>) -> io::Result<libc::c_int> {
    loop {
        // SAFETY: siginfo_t is plain data; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a siginfo_t owned by this frame.
        let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == -1 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // SAFETY: waitid succeeded with WEXITED, so si_pid is set.
        let ended = unsafe { info.si_pid() };
        if ended == pid {
            *alive.lock().unwrap_or_else(|e| e.into_inner()) = false;
        }
        let mut status = 0;
        // SAFETY: reaps exactly the child waitid reported.
        let rc = unsafe { libc::waitpid(ended, &mut status, 0) };
        if rc == -1 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if ended == pid {
            return Ok(status);
        }
        log::debug!(pid = ended; "reaped an orphaned process");
    }
}

/// Reaps every child that has already ended, without blocking.
pub fn reap_orphans() {
    loop {
        let mut status = 0;
        // SAFETY: non-blocking wait for any child.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        log::debug!(pid = pid; "reaped an orphaned process");
    }
}
