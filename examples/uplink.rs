//! A rootless pod with a way out: run as an ordinary user, with no
//! `unshare`, it enters namespaces of its own with pasta as their uplink,
//! publishes a pod's port on the user's real `127.0.0.1`, fetches from it
//! from outside the namespaces, and reaches a server on the real loopback
//! from inside the pod.
//!
//! ```text
//! cargo run --example uplink
//! ```
//!
//! It needs pasta (Debian `passt`) and `/dev/net/tun` readable and
//! writable by the user (mode 0666, as distributions ship it). Nothing is
//! sent to any address but the real host's loopback and the example's own
//! namespaces: pasta gives the namespace `198.18.100.2/24` with the
//! gateway `198.18.100.1`, which it maps to the real loopback. Everything
//! it makes goes when it exits: the pod, the network, pasta and the state
//! directory.

use std::error::Error;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::Duration;

use podnet::rootless::{Entry, Pasta};
use podnet::{Network, PortMapping};
use tokio::io::AsyncWriteExt;

type AnyResult<T> = Result<T, Box<dyn Error>>;

/// How long any one connection may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// What pasta gives the rootless host namespace.
const PASTA_ARGS: [&str; 6] = ["-a", "198.18.100.2", "-n", "24", "-g", "198.18.100.1"];
/// pasta's gateway, which it maps to the real host's loopback.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
/// The pod's server port.
const POD_PORT: u16 = 8080;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--outside") {
        return outside();
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uplink: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> AnyResult<()> {
    // Made while this process is still on the real host, before it enters
    // anything: a server on the real loopback, and a client process that
    // stays there (it fetches the published port when asked).
    let real = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let real_port = real.local_addr()?.port();
    let client = Outside::spawn()?;
    println!("real host: a server on 127.0.0.1:{real_port}, a client process outside");

    // First thing with namespaces, before any thread starts.
    Entry::private()
        .uplink(Pasta::new().args(PASTA_ARGS))
        .enter()?;
    let pasta = podnet::rootless::uplink()?.ok_or("no uplink")?;
    println!("entered a user and network namespace of our own; pasta (PID {pasta}) is its uplink");
    std::thread::spawn(move || serve_real(real));

    let state =
        StateDir(std::env::temp_dir().join(format!("podnet-uplink-{}", std::process::id())));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut client = Some(client);
    let result = rt.block_on(demo(&state.0, real_port, &mut client));
    if let Some(mut client) = client {
        client.finish();
    }
    result.and_then(|()| state.remove())
}

async fn demo(
    state: &std::path::Path,
    real_port: u16,
    client: &mut Option<Outside>,
) -> AnyResult<()> {
    let net = Network::builder("podnet0")
        .subnet("10.88.0.0/16".parse()?)
        .state_dir(state)
        .egress(true)
        .enable_forwarding(true)
        .build()
        .await?;
    let web = net.sandbox("web").create().await?;
    println!("network {}: pod web at {}, egress on", net.name(), web.ip());

    let listener = web
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, POD_PORT)))
        .await??;
    let server = serve_pod(listener, web.ip())?;

    // A port on the user's own 127.0.0.1, opened outside by podnet-outer.
    let mapping = PortMapping::tcp(0, POD_PORT)
        .host_ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .real_host();
    let published = web.add_port(mapping).await?;
    let port = &published[0];
    println!("published {port}");
    let got = fetch_outside(client, port.host.port()).await?;
    println!("outside: fetched 127.0.0.1:{}: {got}", port.host.port());

    // The pod reaches the real loopback: masqueraded out of the rootless
    // host, then carried by pasta to the user's own 127.0.0.1.
    let to = SocketAddr::from((GATEWAY, real_port));
    let got = web.run(move || read_from(to)).await??;
    println!("pod web: fetched {to} (pasta's gateway): {got}");

    web.remove_port(port).await?;
    let got = fetch_outside(client, port.host.port()).await?;
    println!(
        "removed the port; outside: 127.0.0.1:{}: {got}",
        port.host.port()
    );

    server.abort();
    web.remove().await?;
    net.remove().await?;
    println!("removed pod web and network podnet0; pasta ends with this process");
    Ok(())
}

/// Have the client outside fetch 127.0.0.1:`port`, on a blocking thread:
/// this runtime's one thread must go on serving the pod meanwhile.
async fn fetch_outside(client: &mut Option<Outside>, port: u16) -> AnyResult<String> {
    let mut outside = client.take().ok_or("the client has ended")?;
    let (outside, got) = tokio::task::spawn_blocking(move || {
        let got = outside.fetch(port).map_err(|e| e.to_string());
        (outside, got)
    })
    .await?;
    *client = Some(outside);
    Ok(got?)
}

/// Answer each connection on the real loopback with where it came from.
fn serve_real(listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { return };
        let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let _ = writeln!(conn, "hello from the real host's loopback to {peer}");
    }
}

/// Serve the pod's listener from this runtime (the socket stays in the pod).
fn serve_pod(listener: TcpListener, ip: IpAddr) -> AnyResult<tokio::task::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    Ok(tokio::spawn(async move {
        while let Ok((mut conn, peer)) = listener.accept().await {
            let hello = format!("hello from pod web ({ip}:{POD_PORT}) to {peer}\n");
            let _ = conn.write_all(hello.as_bytes()).await;
        }
    }))
}

/// Connect to `addr` and read until the server closes.
fn read_from(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut got = String::new();
    stream.read_to_string(&mut got)?;
    Ok(got.trim_end().to_owned())
}

/// The client process on the real host: this example again (`--outside`),
/// started before `enter()`, so it stays in the original namespaces.
struct Outside {
    child: Child,
    ask: Option<ChildStdin>,
    answers: BufReader<ChildStdout>,
}

impl Outside {
    fn spawn() -> AnyResult<Outside> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--outside")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let ask = child.stdin.take();
        let answers = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(Outside {
            child,
            ask,
            answers,
        })
    }

    /// Have it fetch 127.0.0.1:`port`; what it read, or its error.
    fn fetch(&mut self, port: u16) -> AnyResult<String> {
        let ask = self.ask.as_mut().ok_or("the client has ended")?;
        writeln!(ask, "{port}")?;
        let mut line = String::new();
        self.answers.read_line(&mut line)?;
        Ok(line.trim_end().to_owned())
    }

    /// Close its input (it exits) and reap it.
    fn finish(&mut self) {
        drop(self.ask.take());
        let _ = self.child.wait();
    }
}

/// The `--outside` side: for each port read from stdin, one line of what
/// 127.0.0.1:PORT answered (or the error).
fn outside() -> ExitCode {
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { break };
        let answer = match line.trim().parse::<u16>() {
            Ok(port) => match read_from((Ipv4Addr::LOCALHOST, port).into()) {
                Ok(got) => got,
                Err(e) => format!("error: {e}"),
            },
            Err(e) => format!("error: not a port: {e}"),
        };
        println!("{answer}");
    }
    ExitCode::SUCCESS
}

/// The network's state directory, removed at the end.
struct StateDir(PathBuf);

impl StateDir {
    fn remove(&self) -> AnyResult<()> {
        match std::fs::remove_dir_all(&self.0) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
