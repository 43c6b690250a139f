//! The rootless path, for real: its own binary (`harness = false`) because
//! `unshare(CLONE_NEWUSER)` needs a single-threaded process. CI runs it as an
//! unprivileged user; run as root it skips the "without privilege" part.
//!
//! ```text
//! cargo test --test rootless
//! setpriv --reuid=nobody --regid=nogroup --clear-groups target/debug/deps/rootless-*
//! ```
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::Read;
use std::net::TcpListener;

use podnet::{Error, Network, Phase};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn main() {
    let mut passed = 0;
    let state = std::env::temp_dir().join(format!("podnet-rootless-{}", std::process::id()));
    let privileged = nix::unistd::geteuid().is_root();

    // 1. Without privilege every entry point fails fast, having made nothing.
    if privileged {
        println!("rootless: running as root, so the unprivileged check is skipped here");
    } else {
        // A current-thread runtime starts no thread, so enter() still works after it.
        let err = runtime()
            .block_on(
                Network::builder("pn0")
                    .subnet("10.88.0.0/16".parse().unwrap())
                    .state_dir(&state)
                    .build(),
            )
            .unwrap_err();
        assert!(matches!(err, Error::NotPermitted { .. }), "{err}");
        let text = err.to_string();
        for way in [
            "root",
            "unshare --user --map-root-user --net",
            "rootless::enter()",
        ] {
            assert!(text.contains(way), "{text} does not name {way}");
        }
        assert!(!state.exists(), "a refused build made {}", state.display());
        passed += 1;
    }

    // 2. After enter(), the full path works inside our own namespaces.
    let uid_outside = nix::unistd::geteuid();
    podnet::rootless::enter().expect("rootless::enter");
    assert!(nix::unistd::geteuid().is_root(), "mapped to root inside");
    let rt = runtime();
    rt.block_on(async {
        let net = Network::builder("pn0")
            .subnet("10.88.0.0/16".parse().unwrap())
            .subnet("fd00:88::/64".parse().unwrap())
            .state_dir(&state)
            .build()
            .await
            .expect("build network rootless");
        let a = net.sandbox("a").create().await.expect("create a");
        let b = net.sandbox("b").create().await.expect("create b");
        assert_eq!(a.phase(), Phase::Running);
        assert_ne!(a.ip(), b.ip());

        // Members of a share localhost.
        let l = a
            .run(|| TcpListener::bind("127.0.0.1:8080"))
            .await
            .unwrap()
            .unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).unwrap();
            got
        });
        let ok = a
            .command("bash")
            .args(["-c", "echo -n local > /dev/tcp/127.0.0.1/8080"])
            .status()
            .await
            .unwrap()
            .success();
        assert!(ok);
        assert_eq!(server.join().unwrap(), "local");

        // b reaches a by its address.
        let l = a
            .run(|| TcpListener::bind("0.0.0.0:9000"))
            .await
            .unwrap()
            .unwrap();
        let ok = b
            .command("bash")
            .args(["-c", &format!("echo -n hi > /dev/tcp/{}/9000", a.ip())])
            .status()
            .await
            .unwrap()
            .success();
        assert!(ok);
        let (_, peer) = l.accept().unwrap();
        assert_eq!(peer.ip(), b.ip());

        a.remove().await.unwrap();
        b.remove().await.unwrap();
        assert_eq!(a.phase(), Phase::Succeeded);
        net.remove().await.unwrap();
    });
    passed += 1;
    let _ = std::fs::remove_dir_all(&state);
    println!("rootless (uid {uid_outside} outside): {passed} passed, 0 failed");
}
