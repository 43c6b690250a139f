//! A pod's life: a web server member with a readiness and a liveness probe,
//! and a sidecar that writes the site into a volume they share (at
//! different paths). The events are printed as they happen, then the page
//! is fetched from outside the pod, the pod is stopped, and its final phase
//! printed.
//!
//! ```text
//! cargo build --example lifecycle && unshare --user --map-root-user --net ./target/debug/examples/lifecycle
//! ```
//!
//! Like the `pod` demo it calls `podnet::rootless::enter_private()` first, so
//! it runs in namespaces of its own; everything it makes goes when it exits.
//! It needs `python3` and `sh`.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use podnet::{EventKind, Member, Network, Phase, Probe, RestartPolicy, Volume};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type AnyResult<T> = Result<T, Box<dyn Error>>;

/// The web server: serves its working directory on port 8080 and ends
/// cleanly (exit 0) on SIGTERM, as a pod's server should. A plain TCPServer:
/// `http.server.HTTPServer` looks its own name up in DNS, which a pod
/// without a DNS server answers only after the resolver's timeouts.
const SERVER: &str = r#"
import functools, http.server, signal, socketserver, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass
socketserver.TCPServer.allow_reuse_address = True
socketserver.TCPServer(("0.0.0.0", 8080), Quiet).serve_forever()
"#;

fn main() -> ExitCode {
    // Before any thread exists: unshare(CLONE_NEWUSER) refuses a
    // multi-threaded process.
    if let Err(e) = podnet::rootless::enter_private() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let work = std::env::temp_dir().join(format!("podnet-lifecycle-{}", std::process::id()));
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Box::<dyn Error>::from)
        .and_then(|rt| rt.block_on(demo(&work)));
    let cleanup = std::fs::remove_dir_all(&work);
    match result {
        Ok(Phase::Succeeded) if cleanup.is_ok() => ExitCode::SUCCESS,
        Ok(phase) => {
            eprintln!("error: the pod ended {phase:?} (cleanup: {cleanup:?})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(work: &Path) -> AnyResult<Phase> {
    // Mount points: podnet mounts over existing directories only.
    let dir = |name: &str| -> AnyResult<PathBuf> {
        let p = work.join(name);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    };
    let (state, site_rw, site_ro) = (dir("state")?, dir("writer")?, dir("web")?);
    let net = Network::builder("podnet0")
        .subnet("10.88.0.0/16".parse()?)
        .state_dir(&state)
        .build()
        .await?;

    let web = Member::new("web", "python3")
        .args(["-c", SERVER])
        .current_dir(&site_ro)
        .mount_read_only("site", &site_ro)
        // Ready once the sidecar has written the page (404 until then).
        .readiness_probe(Probe::http_get(8080, "/index.html").period(Duration::from_millis(200)))
        .liveness_probe(
            Probe::tcp(8080)
                .initial_delay(Duration::from_secs(1))
                .period(Duration::from_millis(500)),
        );
    // Rewrites the page every half second, the first time after a while;
    // ends cleanly (exit 0) on SIGTERM.
    let writer = Member::new("writer", "sh")
        .args([
            "-c",
            &format!(
                "trap 'exit 0' TERM; i=0; while :; do sleep 0.5; i=$((i+1)); \
                 echo \"<h1>pass $i of the sidecar, on $(hostname)</h1>\" > {}/index.html; done",
                site_rw.display()
            ),
        ])
        .stderr(podnet::Output::Null)
        .mount("site", &site_rw);
    let pod = net
        .pod("web")
        .restart_policy(RestartPolicy::OnFailure)
        .volume(Volume::tmpfs("site", 1 << 20))
        .member(web)
        .member(writer)
        .termination_grace_period(Duration::from_secs(5))
        .start()
        .await?;
    println!("pod {} at {}: events as they happen", pod.name(), pod.ip());

    let mut events = Box::pin(pod.events());
    let printer = tokio::spawn(async move {
        let start = std::time::Instant::now();
        while let Some(e) = events.next().await {
            println!(
                "  {:>6.3}s  {}",
                start.elapsed().as_secs_f64(),
                describe(&e.kind)
            );
        }
    });

    // Follow the events (no polling) until the pod is Ready; at most 30 s.
    let mut ready = pod
        .events()
        .filter(|e| futures::future::ready(e.kind == EventKind::Ready(true)));
    tokio::time::timeout(Duration::from_secs(30), ready.next())
        .await
        .map_err(|_| format!("the pod did not become ready: {:#?}", pod.members()))?;
    // Let the sidecar rewrite the page a few times.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // From outside the pod (this namespace, where the bridge is).
    let page = fetch(pod.ip(), "/index.html").await?;
    println!("\nfetched from outside the pod: {}\n", page.trim());

    pod.stop().await;
    let phase = pod.phase();
    pod.remove().await?;
    net.remove().await?;
    printer.await?;
    println!("\nfinal phase: {phase:?}");
    Ok(phase)
}

fn describe(kind: &EventKind) -> String {
    match kind {
        EventKind::Phase(p) => format!("phase {p:?}"),
        EventKind::Started {
            member,
            pid,
            restarts,
        } => {
            format!("{member}: started, pid {pid} (restarts: {restarts})")
        }
        EventKind::Exited { member, status } => format!("{member}: {status}"),
        EventKind::Probe {
            member,
            probe,
            passing,
            detail,
        } => format!(
            "{member}: {probe:?} probe {} ({detail})",
            if *passing { "passes" } else { "fails" }
        ),
        EventKind::Ready(r) => format!("pod {}", if *r { "Ready" } else { "not Ready" }),
        EventKind::Killing { member, reason } => format!("{member}: ending it ({reason:?})"),
        other => format!("{other:?}"),
    }
}

/// GET `path` from port 8080 of `ip`, with a deadline.
async fn fetch(ip: std::net::IpAddr, path: &str) -> AnyResult<String> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect((ip, 8080)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), get).await??;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    Ok(body.to_owned())
}
