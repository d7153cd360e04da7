//! The file descriptor budget.
//!
//! Each open connection holds six descriptors: the TCP stream and its clone, and both ends of
//! its Unix socket to the HTTP layer, each with a clone. At start the soft `RLIMIT_NOFILE` is
//! raised to the hard limit (as Go's runtime does for Go webhooks), and a `MAX_CONNECTIONS`
//! that still does not fit is reported, so that running out of descriptors under load is
//! explained in advance rather than discovered as refused connections.

/// Descriptors one open connection uses.
pub const PER_CONNECTION: u64 = 6;
/// Descriptors kept for everything else (listeners, certificate files, logs, the ops server).
const RESERVED: u64 = 64;

/// The descriptor limit before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub before: u64,
    pub now: u64,
}

/// Raises the soft descriptor limit to the hard one; returns both values.
pub fn raise() -> std::io::Result<Limit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one valid rlimit. It fails (and nothing changes) if the hard
        // limit is above what the kernel allows for descriptors; the old soft limit then stays.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Ok(Limit {
        before,
        now: limit.rlim_cur,
    })
}

/// How many connections can be open at once within `limit` descriptors.
pub fn connections_that_fit(limit: u64) -> u64 {
    limit.saturating_sub(RESERVED) / PER_CONNECTION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget() {
        assert_eq!(connections_that_fit(1024), 160);
        assert_eq!(connections_that_fit(1_048_576), 174_752);
        assert_eq!(connections_that_fit(64), 0);
        assert_eq!(connections_that_fit(10), 0);
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let limit = raise().unwrap();
        assert!(limit.now >= limit.before);
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in `raise`.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) }, 0);
        assert_eq!(now.rlim_cur, limit.now);
        // Raised to the hard limit unless the kernel refused that value.
        assert!(now.rlim_cur == now.rlim_max || limit.now == limit.before);
    }
}
