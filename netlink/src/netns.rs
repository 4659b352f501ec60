//! Running code inside another network namespace: `setns` on a dedicated thread that then exits.
//! The only module with `unsafe`: one libc call.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Runs `f` on a fresh thread that first joins the network namespace at `netns`. Sockets `f`
/// opens stay bound to that namespace after the thread exits, so `f` can hand them back. The
/// caller's own threads never change namespace.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let ns = File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns only reads the descriptor, which `ns` keeps open for the call; it
            // changes the namespace of this thread alone, and the thread exits when `f` returns.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            drop(ns);
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
    })
}
