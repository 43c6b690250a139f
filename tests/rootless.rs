//! The rootless path, for real: its own binary (`harness = false`) because
//! entering a user namespace needs a single-threaded process. CI runs it as
//! an unprivileged user; run as root it skips the "without privilege" part.
//! It runs itself again as child processes: one for private namespaces, one
//! that makes the shared rootless host and exits before this one joins it.
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
    let args: Vec<String> = std::env::args().collect();
    // The state directory of this run (children are told it), so two runs
    // at once do not share one.
    let state = match args.get(2) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("podnet-rootless-test-{}", std::process::id())),
    };
    match args.get(1).map(String::as_str) {
        Some("--private") => return private(&state.with_extension("private")),
        Some("--shared-first") => return shared_first(&state),
        _ => {}
    }
    let mut passed = 0;
    let privileged = nix::unistd::geteuid().is_root();
    // A shared rootless host of this test's own, never the user's real one;
    // the children inherit it. (Still single-threaded: setting is sound.)
    let host_dir =
        std::env::temp_dir().join(format!("podnet-rootless-host-{}", std::process::id()));
    std::env::set_var("PODNET_STATE_DIR", &host_dir);

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

    // 2. Private namespaces: the whole path, in a child process (enter_private
    //    and the shared enter() cannot both happen in one process).
    let me = std::env::current_exe().unwrap();
    let ok = std::process::Command::new(&me)
        .arg("--private")
        .arg(&state)
        .status()
        .unwrap();
    assert!(ok.success(), "private rootless run failed");
    passed += 1;

    // 3. The shared rootless host: a first process makes a persistent sandbox
    //    and exits; this one joins the same namespaces, sees it, re-attaches,
    //    adds its own from the same pool, and tears everything down.
    // However this ends, the test's shared host goes.
    let _teardown = Teardown;
    let ok = std::process::Command::new(&me)
        .arg("--shared-first")
        .arg(&state)
        .status()
        .unwrap();
    assert!(ok.success(), "first shared rootless process failed");
    podnet::rootless::enter().expect("join the shared rootless host");
    runtime().block_on(async {
        let net = shared_network(&state).await;
        let listed = net.sandboxes().await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].name, "first");
        assert_eq!(listed[0].phase, Phase::Running);
        let first = net.open_sandbox("first").await.expect("re-attach");
        let second = net.sandbox("second").create().await.expect("create second");
        assert_ne!(first.ip(), second.ip(), "one pool: distinct addresses");
        // They share one bridge: second reaches first by its address.
        reaches_by_ip(&second, &first).await;
        // A port mapping on the rootless host, below 1024: this user
        // namespace owns the host namespace, so binding 80 is allowed.
        let published = second
            .add_port(podnet::PortMapping::tcp(80, 9001))
            .await
            .expect("publish port 80 rootless");
        assert_eq!(published[0].host.port(), 80);
        let l = second
            .run(|| TcpListener::bind("0.0.0.0:9001"))
            .await
            .unwrap()
            .unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            std::io::Write::write_all(&mut s, b"through the mapping").unwrap();
        });
        let mut got = String::new();
        std::io::Read::read_to_string(
            &mut std::net::TcpStream::connect("127.0.0.1:80").unwrap(),
            &mut got,
        )
        .unwrap();
        assert_eq!(got, "through the mapping");
        server.join().unwrap();
        first.remove().await.unwrap();
        second.remove().await.unwrap();
        net.remove().await.unwrap();
    });
    assert!(
        podnet::rootless::teardown().unwrap(),
        "the shared host was there"
    );
    assert!(!podnet::rootless::teardown().unwrap(), "and is gone");
    passed += 1;
    let _ = std::fs::remove_dir_all(&state);
    println!("rootless: {passed} passed, 0 failed");
}

/// A member process of `from` connects to `to`'s address, and `to` sees it
/// come from `from`'s address.
async fn reaches_by_ip(from: &podnet::Sandbox, to: &podnet::Sandbox) {
    let l = to
        .run(|| TcpListener::bind("0.0.0.0:9000"))
        .await
        .unwrap()
        .unwrap();
    let ok = from
        .command("bash")
        .args(["-c", &format!("echo -n hi > /dev/tcp/{}/9000", to.ip())])
        .status()
        .await
        .unwrap()
        .success();
    assert!(ok, "{} could not reach {}", from.name(), to.name());
    let (_, peer) = l.accept().unwrap();
    assert_eq!(peer.ip(), from.ip());
}

struct Teardown;

impl Drop for Teardown {
    fn drop(&mut self) {
        let _ = podnet::rootless::teardown();
    }
}

async fn shared_network(state: &std::path::Path) -> Network {
    Network::builder("pnshared")
        .subnet("10.88.0.0/16".parse().unwrap())
        .state_dir(state)
        .build()
        .await
        .expect("build network in the shared rootless host")
}

/// The first process of the shared host: a persistent sandbox, then exit.
fn shared_first(state: &std::path::Path) {
    podnet::rootless::enter().expect("make the shared rootless host");
    runtime().block_on(async {
        let net = shared_network(state).await;
        let pod = net
            .sandbox("first")
            .persistent(true)
            .create()
            .await
            .expect("create first");
        assert_eq!(pod.phase(), Phase::Running);
    });
}

/// The whole path inside private namespaces.
fn private(state: &std::path::Path) {
    podnet::rootless::enter_private().expect("rootless::enter_private");
    assert!(nix::unistd::geteuid().is_root(), "mapped to root inside");
    let rt = runtime();
    rt.block_on(async {
        let net = Network::builder("pn0")
            .subnet("10.88.0.0/16".parse().unwrap())
            .subnet("fd00:88::/64".parse().unwrap())
            .state_dir(state)
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

        reaches_by_ip(&b, &a).await;

        a.remove().await.unwrap();
        b.remove().await.unwrap();
        assert_eq!(a.phase(), Phase::Succeeded);
        net.remove().await.unwrap();
    });
}
