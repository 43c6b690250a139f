//! The network-policy test cluster, in the manner of Kubernetes' own
//! network-policy e2e tests: 9 sandboxes, `ns` x, y, z by `pod` a, b, c,
//! each serving TCP and UDP on ports 80 and 81; and the probe of the whole
//! matrix (who reaches whom, on which protocol and port) with real
//! connections, compared with what is expected.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use podnet::{Network, Protocol, Sandbox};

/// The label groups and pod names.
pub const GROUPS: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// The ports each pod serves, on TCP and on UDP.
pub const PORTS: [u16; 2] = [80, 81];
/// How long a probe waits for a connection or an answer: a dropped
/// packet shows as a timeout.
const WAIT: Duration = Duration::from_millis(700);

/// One pod of the cluster.
pub struct Pod {
    pub sandbox: Sandbox,
    pub group: &'static str,
    pub pod: &'static str,
    pub ip: IpAddr,
}

impl Pod {
    /// `x/a`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.group, self.pod)
    }
}

/// The 9 pods, labelled `ns=<group>` and `pod=<name>`, serving.
pub async fn start(net: &Network) -> Vec<Pod> {
    let mut out = Vec::new();
    for group in GROUPS {
        for pod in PODS {
            let sandbox = net
                .sandbox(format!("{group}-{pod}"))
                .label("ns", group)
                .label("pod", pod)
                .create()
                .await
                .unwrap();
            serve(&sandbox).await;
            let ip = sandbox.ip();
            out.push(Pod {
                sandbox,
                group,
                pod,
                ip,
            });
        }
    }
    out
}

/// Serve TCP and UDP on [`PORTS`] in `sandbox`: TCP answers `ok` to each
/// connection, UDP echoes each datagram. The sockets are made in the
/// sandbox and served by threads of this process until it exits.
pub async fn serve(sandbox: &Sandbox) {
    for port in PORTS {
        let (tcp, udp) = sandbox
            .run(move || {
                (
                    TcpListener::bind(("0.0.0.0", port)).unwrap(),
                    UdpSocket::bind(("0.0.0.0", port)).unwrap(),
                )
            })
            .await
            .unwrap();
        std::thread::spawn(move || {
            for mut s in tcp.incoming().flatten() {
                let _ = s.write_all(b"ok");
            }
        });
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], from);
            }
        });
    }
}

/// Serve TCP as [`serve`] does, on `addr` and a port the kernel picks, in
/// the calling thread's namespace (the network's host); where.
pub fn serve_here(addr: IpAddr) -> SocketAddr {
    let tcp = TcpListener::bind((addr, 0)).unwrap();
    let at = tcp.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in tcp.incoming().flatten() {
            let _ = s.write_all(b"ok");
        }
    });
    at
}

/// Whether a connection (TCP) or an echo (UDP) from the calling thread's
/// namespace to `to` gets its answer within [`WAIT`].
pub fn reaches(proto: Protocol, to: SocketAddr) -> bool {
    match proto {
        Protocol::Tcp => TcpStream::connect_timeout(&to, WAIT)
            .and_then(|mut s| {
                s.set_read_timeout(Some(WAIT))?;
                let mut got = [0u8; 2];
                s.read_exact(&mut got)?;
                Ok(&got == b"ok")
            })
            .unwrap_or(false),
        _ => {
            let s = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            let mut got = [0u8; 64];
            s.send_to(b"ping", to).is_ok()
                && matches!(s.recv_from(&mut got), Ok((4, from)) if from == to)
        }
    }
}

/// One cell of the matrix: from, to, protocol, port.
pub type Cell = (String, String, Protocol, u16);

/// Probe every pod from every pod, on TCP and UDP, on ports 80 and 81, at
/// once; the cells that got through.
pub async fn probe(pods: &[Pod]) -> Vec<(Cell, bool)> {
    let mut probes = Vec::new();
    for from in pods {
        for to in pods {
            for proto in [Protocol::Tcp, Protocol::Udp] {
                for port in PORTS {
                    let at = SocketAddr::new(to.ip, port);
                    let cell = (from.id(), to.id(), proto, port);
                    let run = from.sandbox.run(move || reaches(proto, at));
                    probes.push(async move { (cell, run.await.unwrap()) });
                }
            }
        }
    }
    futures::future::join_all(probes).await
}

/// Probe the matrix and compare it with `expect(from, to, proto, port)`;
/// panics listing every cell that differs. A pod reaches itself whatever
/// the policies (its traffic to its own address never leaves it).
pub async fn assert_matrix(pods: &[Pod], expect: impl Fn(&Pod, &Pod, Protocol, u16) -> bool) {
    let got = probe(pods).await;
    let by_id = |id: &str| pods.iter().find(|p| p.id() == id).unwrap();
    let mut wrong = Vec::new();
    for ((from, to, proto, port), reached) in &got {
        let want = from == to || expect(by_id(from), by_id(to), *proto, *port);
        if want != *reached {
            wrong.push(format!(
                "{from} -> {to} {proto}/{port}: expected {}, got {}",
                if want { "reach" } else { "drop" },
                if *reached { "reach" } else { "drop" }
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cells differ:\n{}",
        wrong.len(),
        got.len(),
        wrong.join("\n")
    );
}

/// Remove the pods, then the network.
pub async fn stop(net: &Network, pods: Vec<Pod>) {
    for p in pods {
        p.sandbox.remove().await.unwrap();
    }
    net.remove().await.unwrap();
}
