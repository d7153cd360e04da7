//! SIGTERM and SIGINT turned into a shared flag that threads can poll or wait on.
//!
//! [`Shutdown::install`] starts one thread that receives the signals; every clone of the
//! returned handle sees the first signal's number. Servers stop accepting and finish
//! in-flight work; a binary that drives a child process forwards the signal to it.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// A handle on the process's shutdown state. Cheap to clone.
#[derive(Clone, Default)]
pub struct Shutdown {
    state: Arc<(Mutex<Option<i32>>, Condvar)>,
}

impl Shutdown {
    /// A handle that only [`Shutdown::trigger`] sets (tests, or an internal stop).
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Registers SIGTERM and SIGINT handlers and returns the handle they set.
    pub fn install() -> std::io::Result<Shutdown> {
        let shutdown = Shutdown::new();
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        let handle = shutdown.clone();
        std::thread::Builder::new().name("signals".into()).spawn(move || {
            for signal in signals.forever() {
                handle.trigger(signal);
            }
        })?;
        Ok(shutdown)
    }

    /// Records `signal` as the reason to stop (the first one wins) and wakes all waiters.
    pub fn trigger(&self, signal: i32) {
        let (lock, cvar) = &*self.state;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        if state.is_none() {
            *state = Some(signal);
        }
        cvar.notify_all();
    }

    /// The signal that asked us to stop, if one has.
    pub fn requested(&self) -> Option<i32> {
        *self.state.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `timeout` for a stop request; returns the signal if one came.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<i32> {
        let (lock, cvar) = &*self.state;
        let deadline = Instant::now() + timeout;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        while state.is_none() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = cvar
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *state
    }

    /// Blocks until a stop request comes and returns its signal.
    pub fn wait(&self) -> i32 {
        let (lock, cvar) = &*self.state;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(signal) = *state {
                return signal;
            }
            state = cvar.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The conventional name of a signal number, for log lines.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_signal_wins_and_wakes_waiters() {
        let s = Shutdown::new();
        assert_eq!(s.wait_timeout(Duration::from_millis(10)), None);
        let waiter = {
            let s = s.clone();
            std::thread::spawn(move || s.wait())
        };
        s.trigger(SIGTERM);
        s.trigger(SIGINT);
        assert_eq!(waiter.join().unwrap(), SIGTERM);
        assert_eq!(s.requested(), Some(SIGTERM));
        assert_eq!(s.wait_timeout(Duration::from_secs(5)), Some(SIGTERM));
    }
}
