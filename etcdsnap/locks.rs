//! Per-id mutual exclusion inside one driver process: one operation per snapshot or group id
//! at a time. Across processes and restarts the records' resourceVersion keeps updates from
//! being lost (see `metadata`).

use std::collections::HashSet;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::status::{Code, Status};

/// Per-id mutual exclusion inside this process.
#[derive(Default)]
pub struct KeyLocks {
    held: Mutex<HashSet<String>>,
    freed: Condvar,
}

pub struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: String,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|e| e.into_inner());
        held.remove(&self.key);
        self.locks.freed.notify_all();
    }
}

impl KeyLocks {
    /// Waits up to `wait` for `key`; ABORTED ("operation pending") after that, as CSI asks.
    pub fn lock(&self, key: &str, wait: Duration) -> Result<KeyGuard<'_>, Status> {
        let deadline = std::time::Instant::now() + wait;
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while held.contains(key) {
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(Status::new(
                    Code::Aborted,
                    format!("an operation on {key} is already in progress; retry"),
                ));
            }
            held = self
                .freed
                .wait_timeout(held, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        held.insert(key.to_string());
        Ok(KeyGuard {
            locks: self,
            key: key.to_string(),
        })
    }

    pub fn try_lock(&self, key: &str) -> Option<KeyGuard<'_>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.contains(key) {
            return None;
        }
        held.insert(key.to_string());
        Some(KeyGuard {
            locks: self,
            key: key.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn key_locks_exclude_and_time_out() {
        let locks = Arc::new(KeyLocks::default());
        let g = locks.lock("g-1", Duration::from_secs(1)).unwrap();
        assert!(locks.try_lock("g-1").is_none());
        assert!(locks.try_lock("g-2").is_some());
        let err = locks.lock("g-1", Duration::from_millis(50)).err().unwrap();
        assert_eq!(err.code, Code::Aborted);
        let l2 = Arc::clone(&locks);
        let waiter = std::thread::spawn(move || l2.lock("g-1", Duration::from_secs(10)).is_ok());
        std::thread::sleep(Duration::from_millis(50));
        drop(g);
        assert!(waiter.join().unwrap());
    }
}
