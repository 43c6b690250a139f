//! Liveness, readiness and startup probes: what a check is (a command run
//! inside the pod, a TCP connect, an HTTP GET, the last two from inside the
//! pod's network namespace), and how results turn into a verdict.

use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::error::{Error, Result};
use crate::pod::Ctx;

/// A check run periodically against a member, as Kubernetes defines probes.
///
/// Defaults are Kubernetes': no initial delay, a period of 10 s, a timeout
/// of 1 s, one success and three failures to change the verdict.
///
/// ```
/// use std::time::Duration;
/// use podnet::Probe;
///
/// let ready = Probe::http_get(8080, "/healthz").period(Duration::from_secs(2));
/// let alive = Probe::tcp(8080).failure_threshold(5);
/// let started = Probe::exec(["test", "-e", "/tmp/started"]);
/// # let _ = (ready, alive, started);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub(crate) action: Action,
    pub(crate) initial_delay: Duration,
    pub(crate) period: Duration,
    pub(crate) timeout: Duration,
    pub(crate) success_threshold: u32,
    pub(crate) failure_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Exec(Vec<OsString>),
    Tcp {
        host: Option<IpAddr>,
        port: u16,
    },
    Http {
        host: Option<IpAddr>,
        port: u16,
        path: String,
    },
}

impl Probe {
    fn new(action: Action) -> Probe {
        Probe {
            action,
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
        }
    }

    /// Run a command inside the pod (its namespaces, as a member); exit
    /// status 0 passes.
    pub fn exec<I, S>(argv: I) -> Probe
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Probe::new(Action::Exec(argv.into_iter().map(Into::into).collect()))
    }

    /// Open a TCP connection to `port` of the pod's address, from inside
    /// the pod; a completed handshake passes.
    pub fn tcp(port: u16) -> Probe {
        Probe::new(Action::Tcp { host: None, port })
    }

    /// `GET path` over HTTP/1.1 to `port` of the pod's address, from inside
    /// the pod; a 2xx or 3xx status passes.
    pub fn http_get(port: u16, path: impl Into<String>) -> Probe {
        Probe::new(Action::Http {
            host: None,
            port,
            path: path.into(),
        })
    }

    /// Connect to `host` instead of the pod's address (e.g. `127.0.0.1` for
    /// a server bound to loopback). TCP and HTTP probes only.
    pub fn host(mut self, host: IpAddr) -> Probe {
        match &mut self.action {
            Action::Tcp { host: h, .. } | Action::Http { host: h, .. } => *h = Some(host),
            Action::Exec(_) => {}
        }
        self
    }

    /// Wait this long after the member starts before the first check.
    pub fn initial_delay(mut self, delay: Duration) -> Probe {
        self.initial_delay = delay;
        self
    }

    /// Check this often.
    pub fn period(mut self, period: Duration) -> Probe {
        self.period = period;
        self
    }

    /// A check that takes longer fails.
    pub fn timeout(mut self, timeout: Duration) -> Probe {
        self.timeout = timeout;
        self
    }

    /// Successes in a row that make a failing probe pass (must be 1 for
    /// liveness and startup probes, as in Kubernetes).
    pub fn success_threshold(mut self, n: u32) -> Probe {
        self.success_threshold = n;
        self
    }

    /// Failures in a row that make a passing probe fail.
    pub fn failure_threshold(mut self, n: u32) -> Probe {
        self.failure_threshold = n;
        self
    }

    /// Check the settings; `what` names the probe in errors.
    pub(crate) fn validate(&self, what: &str, success_must_be_one: bool) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::InvalidConfig {
                reason: format!("{what}: {reason}"),
            })
        };
        if self.period.is_zero() || self.timeout.is_zero() {
            return bad("period and timeout must be more than zero".into());
        }
        if self.success_threshold == 0 || self.failure_threshold == 0 {
            return bad("thresholds must be at least 1".into());
        }
        if success_must_be_one && self.success_threshold != 1 {
            return bad("success_threshold must be 1 for liveness and startup probes".into());
        }
        match &self.action {
            Action::Exec(argv) if argv.is_empty() => bad("an exec probe needs a command".into()),
            Action::Tcp { port: 0, .. } | Action::Http { port: 0, .. } => {
                bad("port 0 cannot be probed".into())
            }
            Action::Http { path, .. } if !path.starts_with('/') || path.contains(['\r', '\n']) => {
                bad(format!(
                    "HTTP path {path:?} must start with '/' and be one line"
                ))
            }
            _ => Ok(()),
        }
    }

    /// One check of a member's probe (`command` makes a command that
    /// runs as the member does): `Ok(detail)` passes, `Err(detail)`
    /// fails. The timeout counts from when the check is under way (for an
    /// exec probe, from when its process has started).
    pub(crate) async fn check(
        &self,
        ctx: &Ctx,
        command: impl FnOnce(&OsStr) -> tokio::process::Command,
    ) -> std::result::Result<String, String> {
        let timed_out = || format!("timed out after {:?}", self.timeout);
        match &self.action {
            Action::Exec(argv) => {
                let mut cmd = command(&argv[0]);
                cmd.args(&argv[1..])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let child = ctx.spawn_tied(cmd).await.map_err(|e| e.to_string())?;
                // However the check ends (a timeout drops the child), what
                // the probe started goes with it.
                let _group = Group(child.id().unwrap_or_default());
                let out = tokio::time::timeout(self.timeout, child.wait_with_output())
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|e| format!("wait: {e}"))?;
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                let text: String = text.trim().chars().take(200).collect();
                if out.status.success() {
                    Ok(format!("{}: {text}", out.status))
                } else {
                    Err(format!("{}: {text}", out.status))
                }
            }
            Action::Tcp { host, port } => {
                tokio::time::timeout(self.timeout, connect(ctx, host.unwrap_or(ctx.ip), *port))
                    .await
                    .map_err(|_| timed_out())??;
                Ok(format!("connected to port {port}"))
            }
            Action::Http { host, port, path } => {
                let host = host.unwrap_or(ctx.ip);
                let get = async {
                    let mut stream = connect(ctx, host, *port).await?;
                    let authority = SocketAddr::new(host, *port);
                    let request = format!(
                        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: podnet-probe\r\n\
                         Accept: */*\r\nConnection: close\r\n\r\n"
                    );
                    stream
                        .write_all(request.as_bytes())
                        .await
                        .map_err(|e| format!("send request: {e}"))?;
                    read_status(&mut stream).await
                };
                let status = tokio::time::timeout(self.timeout, get)
                    .await
                    .map_err(|_| timed_out())??;
                if (200..400).contains(&status) {
                    Ok(format!("HTTP {status}"))
                } else {
                    Err(format!("HTTP {status}"))
                }
            }
        }
    }
}

/// Kills the process group of an exec probe when dropped.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

/// A TCP connection from inside the pod's network namespace: the socket is
/// made on a thread inside, then connected from here.
async fn connect(ctx: &Ctx, host: IpAddr, port: u16) -> std::result::Result<TcpStream, String> {
    let socket = ctx
        .run(move || match host {
            IpAddr::V4(_) => TcpSocket::new_v4(),
            IpAddr::V6(_) => TcpSocket::new_v6(),
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("socket: {e}"))?;
    socket
        .connect(SocketAddr::new(host, port))
        .await
        .map_err(|e| format!("connect to {}: {e}", SocketAddr::new(host, port)))
}

/// Read an HTTP response's status line and return its code.
async fn read_status(stream: &mut TcpStream) -> std::result::Result<u16, String> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read response: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    match (words.next(), words.next().and_then(|c| c.parse().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
        _ => Err(format!("not an HTTP response: {:?}", line.trim())),
    }
}

/// Turns check results into a verdict, with Kubernetes' thresholds.
#[derive(Debug)]
pub(crate) struct Verdict {
    passing: Option<bool>,
    successes: u32,
    failures: u32,
}

impl Verdict {
    /// A verdict that starts undecided.
    pub(crate) fn new() -> Verdict {
        Verdict {
            passing: None,
            successes: 0,
            failures: 0,
        }
    }

    /// Count one result; returns the new verdict when it changed.
    pub(crate) fn observe(&mut self, ok: bool, probe: &Probe) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let verdict = if self.successes >= probe.success_threshold {
            Some(true)
        } else if self.failures >= probe.failure_threshold {
            Some(false)
        } else {
            None
        };
        match verdict {
            Some(v) if self.passing != Some(v) => {
                self.passing = Some(v);
                Some(v)
            }
            _ => None,
        }
    }
}

/// SIGKILL to what is left of the process group `pid` led, once its leader
/// has been waited for. The number cannot name another group meanwhile:
/// the kernel does not reuse a PID while a group of that number has
/// members, and a new group of that number would need the PID to be reused
/// and its new owner to lead a group, both since the wait.
pub(crate) fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 0 {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_thresholds() {
        let p = Probe::tcp(80).success_threshold(2).failure_threshold(3);
        let mut v = Verdict::new();
        assert_eq!(v.observe(true, &p), None);
        assert_eq!(v.observe(true, &p), Some(true));
        assert_eq!(v.observe(true, &p), None);
        assert_eq!(v.observe(false, &p), None);
        assert_eq!(v.observe(false, &p), None);
        assert_eq!(v.observe(true, &p), None, "a success resets the failures");
        assert_eq!(v.observe(false, &p), None);
        assert_eq!(v.observe(false, &p), None);
        assert_eq!(v.observe(false, &p), Some(false));
        assert_eq!(v.observe(false, &p), None);
        assert_eq!(v.observe(true, &p), None);
        assert_eq!(v.observe(true, &p), Some(true));
    }

    #[test]
    fn defaults_are_kubernetes() {
        // initialDelaySeconds 0, periodSeconds 10, timeoutSeconds 1,
        // successThreshold 1, failureThreshold 3, whatever the check.
        for p in [
            Probe::exec(["true"]),
            Probe::tcp(80),
            Probe::http_get(80, "/healthz"),
        ] {
            assert_eq!(p.initial_delay, Duration::ZERO, "{p:?}");
            assert_eq!(p.period, Duration::from_secs(10), "{p:?}");
            assert_eq!(p.timeout, Duration::from_secs(1), "{p:?}");
            assert_eq!(p.success_threshold, 1, "{p:?}");
            assert_eq!(p.failure_threshold, 3, "{p:?}");
            // The same as setting each through the public builder.
            let explicit = p
                .clone()
                .initial_delay(Duration::ZERO)
                .period(Duration::from_secs(10))
                .timeout(Duration::from_secs(1))
                .success_threshold(1)
                .failure_threshold(3);
            assert_eq!(p, explicit);
            assert!(p.validate("p", true).is_ok(), "{p:?}");
        }
        // And they act so: three failures in a row fail, one success passes.
        let p = Probe::tcp(80);
        let mut v = Verdict::new();
        assert_eq!(v.observe(true, &p), Some(true));
        assert_eq!(v.observe(false, &p), None);
        assert_eq!(v.observe(false, &p), None);
        assert_eq!(v.observe(false, &p), Some(false));
        assert_eq!(v.observe(true, &p), Some(true));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Probe::tcp(0).validate("p", false).is_err());
        assert!(Probe::tcp(1)
            .period(Duration::ZERO)
            .validate("p", false)
            .is_err());
        assert!(Probe::tcp(1)
            .failure_threshold(0)
            .validate("p", false)
            .is_err());
        assert!(Probe::tcp(1)
            .success_threshold(2)
            .validate("p", true)
            .is_err());
        assert!(Probe::tcp(1)
            .success_threshold(2)
            .validate("p", false)
            .is_ok());
        assert!(Probe::exec(Vec::<String>::new())
            .validate("p", false)
            .is_err());
        assert!(Probe::http_get(80, "x").validate("p", false).is_err());
        assert!(Probe::http_get(80, "/a\r\nX: y")
            .validate("p", false)
            .is_err());
        assert!(Probe::http_get(80, "/").validate("p", false).is_ok());
    }
}
