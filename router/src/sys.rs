//! The router's few direct system calls. The only module with `unsafe`: each block is one libc
//! call on a local struct.
#![allow(unsafe_code)]

use std::io;

/// Raises the soft limit on open files to the hard limit, so that caps, not the kernel's
/// default of 1024, decide how many connections the router holds. Returns the limit now in
/// force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and keeps no pointer to it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass and keeps no pointer to it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            let e = io::Error::last_os_error();
            tracing::warn!(error = %e, soft = limit.rlim_cur, hard = limit.rlim_max, "cannot raise the open files limit");
            return Ok(limit.rlim_cur);
        }
        return Ok(raised.rlim_cur);
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let now = super::raise_open_files_limit().unwrap();
        assert!(now > 0);
        assert_eq!(super::raise_open_files_limit().unwrap(), now);
    }
}
