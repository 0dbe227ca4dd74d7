//! Making room for `max_clients` connections in the open-file limit.
//!
//! Each client connection is a file descriptor. Many systems start
//! processes with a soft `RLIMIT_NOFILE` of 1024 and a far higher hard
//! limit; past the soft limit `accept` fails and no new client, operator
//! included, gets in. The node raises its soft limit to the hard one at
//! start, and if even that leaves no room for every client slot it serves
//! fewer clients and says so (as Redis does with `maxclients`).

/// Descriptors kept for everything but clients: the log's segments and
/// directory, checkpoints, the QUIC socket, the runtime, stdio.
pub const RESERVED_FDS: u64 = 128;

/// Raises the soft open-file limit to the hard limit; returns the soft
/// limit now in force.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass and nothing else.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    // rlim_t is u64 on Linux.
    Ok(lim.rlim_cur)
}

/// The number of client slots (`max_clients` plus `reserved` operator
/// slots) that fit in `nofile` descriptors, and the `max_clients` to use:
/// the configured one if it fits, else what fits (at least 1).
pub fn clients_that_fit(max_clients: usize, reserved: usize, nofile: u64) -> usize {
    let room = nofile.saturating_sub(RESERVED_FDS);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    max_clients.min(room.saturating_sub(reserved)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_only_when_the_limit_is_short() {
        assert_eq!(clients_that_fit(10_000, 16, 1 << 20), 10_000);
        assert_eq!(clients_that_fit(10_000, 16, 1024), 1024 - 128 - 16);
        assert_eq!(clients_that_fit(10_000, 16, 100), 1);
        assert_eq!(clients_that_fit(10, 0, u64::MAX), 10);
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_limit() {
        let soft = raise_nofile_limit().unwrap();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in raise_nofile_limit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, soft);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
    }
}
