//! Two pod sandboxes on one bridge: members of a pod share its localhost,
//! pods reach each other by name, and outsiders reach neither pod's
//! localhost.
//!
//! ```text
//! cargo build --example pod && unshare --user --map-root-user --net ./target/debug/examples/pod
//! ```
//!
//! It also runs as root or as any user allowed to make user namespaces
//! (`./target/debug/examples/pod`): it calls `podnet::rootless::enter_private()`
//! first, so it always works in namespaces of its own and never touches the
//! machine's real network. Everything it makes goes when it exits.

use std::error::Error;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use podnet::{Network, Sandbox};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

type AnyResult<T> = Result<T, Box<dyn Error>>;

/// How long any single connection or member process may take.
const TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    // Before the runtime starts any thread: unshare(CLONE_NEWUSER) refuses a
    // multi-threaded process (unshare(2)).
    if let Err(e) = podnet::rootless::enter_private() {
        return fail(&e);
    }
    let state = StateDir(std::env::temp_dir().join(format!("podnet-demo-{}", std::process::id())));
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Box::<dyn Error>::from)
        .and_then(|rt| rt.block_on(demo(&state.0)));
    // On an error the pods and the bridge need no removal: they live in the
    // namespaces rootless::enter_private() made, and holders die with this process.
    match result.and_then(|()| state.remove()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&*e),
    }
}

async fn demo(state: &Path) -> AnyResult<()> {
    let net = Network::builder("podnet0")
        .subnet("10.88.0.0/16".parse()?)
        .state_dir(state)
        .build()
        .await?;
    println!(
        "network {}: pool {}, gateway {}, store under {}\n",
        net.name(),
        net.subnets()[0],
        net.gateways()[0],
        state.display()
    );

    let pod_a = net.sandbox("pod-a").create().await?;
    let pod_b = net.sandbox("pod-b").create().await?;

    // Member 1 of pod A: listening sockets made on a thread inside pod A
    // (they stay in pod A's namespace), served here by tasks on our runtime.
    let local = pod_a.run(|| TcpListener::bind("127.0.0.1:8080")).await??;
    let public = pod_a.run(|| TcpListener::bind("0.0.0.0:9090")).await??;
    let servers = [
        serve(local, "pod-a's 127.0.0.1:8080")?,
        serve(public, "pod-a's 0.0.0.0:9090")?,
    ];
    println!("pod-a: a member listens on 127.0.0.1:8080 and 0.0.0.0:9090");

    // Member 2 of pod A, another process: bash reaches member 1 over pod A's
    // localhost (/dev/tcp is a bash feature; dash has none).
    let (pid, got) = member_reads(&pod_a, "127.0.0.1", 8080).await?;
    println!("pod-a: member bash (pid {pid}) read over localhost: {got}");

    // Pod B reaches pod A by name: bash in pod B resolves "pod-a" with the
    // network's DNS, which its /etc/resolv.conf names, and connects through
    // the bridge.
    let (pid, got) = member_reads(&pod_b, "pod-a", 9090).await?;
    println!("pod-b: bash (pid {pid}) read from pod-a:9090, by name: {got}");

    // A thread inside reads the host's files: it asks the network instead.
    let a_ip = net.resolve("pod-a")?[0];
    let got = pod_b.run(move || read_from((a_ip, 9090).into())).await??;
    println!("pod-b: a thread inside read from {a_ip}:9090 (net.resolve(\"pod-a\")): {got}");

    // This thread is in no sandbox: pod A's loopback server is out of reach,
    // on its own localhost and through pod A's address alike.
    for target in ["127.0.0.1:8080".parse()?, SocketAddr::new(a_ip, 8080)] {
        outsider_is_refused(target).await?;
        println!("outsider: {target} refused, as it should be");
    }

    println!();
    print_table(&[&pod_a, &pod_b]);

    for server in &servers {
        server.abort();
    }
    pod_a.remove().await?;
    pod_b.remove().await?;
    net.remove().await?;
    println!(
        "\nremoved pod-a ({:?}), pod-b ({:?}) and network podnet0",
        pod_a.phase(),
        pod_b.phase()
    );
    Ok(())
}

/// Answer every connection on `listener` with a greeting naming `what` and the peer.
fn serve(listener: TcpListener, what: &'static str) -> AnyResult<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    Ok(tokio::spawn(async move {
        while let Ok((mut conn, peer)) = listener.accept().await {
            let hello = format!("hello from {what} to {peer}\n");
            let _ = conn.write_all(hello.as_bytes()).await;
        }
    }))
}

/// A bash process joins `pod`, connects to `addr:port` and prints what it
/// reads; returns its pid and that line.
async fn member_reads(pod: &Sandbox, addr: &str, port: u16) -> AnyResult<(u32, String)> {
    let child = pod
        .command("bash")
        .arg("-c")
        .arg(format!("exec 3<>/dev/tcp/{addr}/{port} && cat <&3"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("bash in {} timed out reading {addr}:{port}", pod.name()))??;
    if !out.status.success() {
        return Err(format!(
            "bash in {} could not read {addr}:{port}: {}",
            pod.name(),
            out.status
        )
        .into());
    }
    Ok((
        pid,
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned(),
    ))
}

/// Connect to `addr` and read until the server closes.
fn read_from(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut got = String::new();
    stream.read_to_string(&mut got)?;
    Ok(got.trim_end().to_owned())
}

async fn outsider_is_refused(target: SocketAddr) -> AnyResult<()> {
    let attempt = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(target)).await;
    match attempt {
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
        Ok(Err(e)) => {
            Err(format!("outsider connecting to {target}: expected refusal, got: {e}").into())
        }
        Ok(Ok(_)) => {
            Err(format!("outsider reached {target}: pod-a's localhost is not private").into())
        }
        Err(_) => Err(format!(
            "outsider connecting to {target}: timed out instead of being refused"
        )
        .into()),
    }
}

fn print_table(pods: &[&Sandbox]) {
    let head = ["NAME", "IP", "HOLDER PID", "PHASE"];
    let rows: Vec<[String; 4]> = pods
        .iter()
        .map(|p| {
            [
                p.name().to_owned(),
                p.ip().to_string(),
                p.holder_pid().to_string(),
                format!("{:?}", p.phase()),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 4]| {
        let [a, b, c, d] = cells;
        println!(
            "{a:<w0$}  {b:<w1$}  {c:<w2$}  {d}",
            w0 = width[0],
            w1 = width[1],
            w2 = width[2]
        );
    };
    line(head);
    for [a, b, c, d] in &rows {
        line([a, b, c, d]);
    }
}

/// The demo's state directory, removed on every way out.
struct StateDir(PathBuf);

impl StateDir {
    fn remove(&self) -> AnyResult<()> {
        match std::fs::remove_dir_all(&self.0) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("remove {}: {e}", self.0.display()).into())
            }
            _ => Ok(()),
        }
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Print `e` and every error behind it; the exit code for a failure.
fn fail(e: &dyn Error) -> ExitCode {
    eprintln!("error: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        eprintln!("  caused by: {c}");
        cause = c.source();
    }
    ExitCode::FAILURE
}
