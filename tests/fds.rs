//! The holders podnet makes never hold the creator's fds: a socket the
//! creator closes is gone at once, even while sandboxes are being made.
//!
//! A test binary of its own, with one test: any other test's fork (a member,
//! a `Command`) copies this process's fd table until its exec, which is the
//! very thing measured here.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::in_netns;
use nix::errno::Errno;
use nix::libc;

/// The binder's sockets are numbered this or more: above the fds podnet
/// keeps for itself (its holder program and /dev/null, opened when the
/// network is built). Fds below those are copied by a holder for a moment
/// (see src/holder.rs), which this test does not cover.
const HIGH: i32 = 200;

/// A new TCP socket numbered `HIGH` or more: lower ones are kept in
/// `parked` (open, unused) so that they are never taken again.
fn high_socket(parked: &mut Vec<OwnedFd>) -> OwnedFd {
    loop {
        // SAFETY: socket(2) gives a new fd, wrapped in OwnedFd at once.
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(s >= 0, "socket: {}", Errno::last());
        // SAFETY: a new fd that nothing else owns.
        let s = unsafe { OwnedFd::from_raw_fd(s) };
        if s.as_raw_fd() >= HIGH {
            return s;
        }
        parked.push(s);
    }
}

/// Bind and listen on 127.0.0.1:`port` with a socket numbered `HIGH` or
/// more, then close it. Whether the bind found the port free.
fn listen_once(port: u16, parked: &mut Vec<OwnedFd>) -> bool {
    let s = high_socket(parked);
    let fd = s.as_raw_fd();
    // SAFETY: socket calls on an fd we own, with a sockaddr_in and an int
    // that live across each call.
    unsafe {
        // As std does: connections in TIME_WAIT do not count.
        let one: libc::c_int = 1;
        let len = libc::socklen_t::try_from(std::mem::size_of_val(&one)).unwrap();
        let opt = (&raw const one).cast();
        assert_eq!(
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, opt, len),
            0
        );
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::sa_family_t::try_from(libc::AF_INET).unwrap();
        sin.sin_port = port.to_be();
        sin.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = libc::socklen_t::try_from(std::mem::size_of_val(&sin)).unwrap();
        if libc::bind(fd, (&raw const sin).cast(), len) != 0 {
            let errno = Errno::last();
            assert_eq!(errno, Errno::EADDRINUSE, "bind 127.0.0.1:{port}");
            return false;
        }
        assert_eq!(libc::listen(fd, 8), 0, "listen: {}", Errno::last());
    }
    true
}

#[test]
fn a_closed_listener_is_gone_at_once_while_holders_are_made() {
    in_netns(|ctx| async move {
        let net = common::network(&ctx).await;
        // A first create and removal, so nothing is done for the first time
        // while the binder runs.
        net.sandbox("first")
            .create()
            .await
            .unwrap()
            .remove()
            .await
            .unwrap();
        // Threads start in the namespace of the thread that starts them:
        // this one binds and closes one port of this test's namespace, over
        // and over, while the test thread makes and removes sandboxes.
        let stop = Arc::new(AtomicBool::new(false));
        let binder = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let (mut binds, mut in_use) = (0u32, 0u32);
                let mut parked = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    binds += 1;
                    if !listen_once(7777, &mut parked) {
                        in_use += 1;
                    }
                }
                (binds, in_use)
            }
        });
        for i in 0..40 {
            let pod = net.sandbox(format!("p{i}")).create().await.unwrap();
            pod.remove().await.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let (binds, in_use) = binder.join().unwrap();
        eprintln!("{binds} binds, {in_use} found the port taken");
        assert!(binds > 40, "the binder ran only {binds} times");
        assert_eq!(in_use, 0, "a holder held a closed socket open");
        net.remove().await.unwrap();
    });
}
