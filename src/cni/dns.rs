//! The network's DNS server under CNI (`dnsServer: true`): a plugin
//! process ends with its verb, so the server is a process of its own,
//! `podnet-cni --serve-dns` with the network's configuration on stdin,
//! started by the first ADD that finds none. It holds the lock file
//! `cni-dns.lock` in the network's store while it serves (so there is one
//! per network and host namespace), answers at the gateway as a library
//! process of the network does (the names of pods and the aliases of
//! attachments, from the shared store), and exits once the network has no
//! live member for two checks a second apart.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use super::codes;
use super::config::{NetConf, Upstream};
use super::error::CniError;
use super::network::network_builder;
use crate::{DnsUpstream, Network, Phase};

/// The argument that makes `podnet-cni` the DNS server.
pub const SERVE_DNS: &str = "--serve-dns";

/// The name of the lock file a server holds, in the network's store.
const LOCK: &str = "cni-dns.lock";

/// How long an ADD waits for a server it started to say it serves.
const READY_WITHIN: Duration = Duration::from_secs(5);

/// How often the server looks for live members.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Make sure a DNS server serves `net` (an ADD's), started from `conf_json`
/// (the configuration the ADD read) if none does.
///
/// # Errors
/// Code 5 if the lock file cannot be opened or the server cannot be
/// started; podnet's 109 if it does not say it serves in time.
pub fn ensure(net: &Network, conf_json: &[u8]) -> Result<(), CniError> {
    let lock = lock_path(net.store_path());
    let file = open_lock(&lock)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        // None serves: let go of it for the server to take.
        Ok(held) => drop(held),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(()),
        Err((_, errno)) => {
            return Err(CniError::io(
                format!("cannot lock {}", lock.display()),
                errno.to_string(),
            ))
        }
    }
    let exe = std::env::current_exe()
        .map_err(|e| CniError::io("cannot find podnet-cni's own executable", e.to_string()))?;
    let mut cmd = Command::new(exe);
    cmd.arg(SERVE_DNS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    crate::sys::new_session_on_spawn(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| CniError::io("cannot start the DNS server", e.to_string()))?;
    let wrote = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(conf_json));
    let Some(stdout) = child.stdout.take() else {
        return Err(CniError::io("cannot start the DNS server", "no stdout"));
    };
    // One line, "ready", within READY_WITHIN, read on a thread of its own
    // so that a server that hangs cannot hang the ADD.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let answer = rx.recv_timeout(READY_WITHIN).unwrap_or_default();
    if let Some(Err(e)) = wrote {
        return Err(CniError::io("cannot start the DNS server", e.to_string()));
    }
    if answer.trim() == "ready" {
        // It runs on in its own session; its exit is no one's to wait for
        // here (it is reaped by whoever inherits it).
        drop(child);
        return Ok(());
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(CniError::new(
        codes::DNS_SERVER,
        "the network's DNS server did not start",
        if answer.is_empty() {
            format!("it said nothing within {READY_WITHIN:?}")
        } else {
            answer.trim().to_owned()
        },
    ))
}

/// The server: read the configuration on stdin, build the network with
/// its DNS, take the lock (or leave it to the server that holds it), say
/// `ready`, serve until the network has no live member. Returns the exit
/// status.
pub fn serve() -> std::process::ExitCode {
    let mut conf_json = Vec::new();
    let read = std::io::stdin().take(4 << 20).read_to_end(&mut conf_json);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let (Ok(_), Ok(rt)) = (read, rt) else {
        println!("cannot read the configuration or start a runtime");
        return std::process::ExitCode::FAILURE;
    };
    match rt.block_on(serve_network(&conf_json)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The ADD reads this line instead of "ready".
            println!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve_network(conf_json: &[u8]) -> Result<(), String> {
    let conf = NetConf::from_slice(conf_json).map_err(|e| e.to_string())?;
    let net = dns_builder(&conf)?
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let lock = lock_path(net.store_path());
    let file = open_lock(&lock).map_err(|e| e.to_string())?;
    let held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(held) => held,
        // Another server took it first: it serves.
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            say_ready();
            return Ok(());
        }
        Err((_, errno)) => return Err(format!("cannot lock {}: {errno}", lock.display())),
    };
    say_ready();
    let mut quiet = 0;
    while quiet < 2 {
        tokio::time::sleep(CHECK_EVERY).await;
        let live = net.sandboxes().await.is_ok_and(|list| {
            list.iter()
                .any(|s| matches!(s.phase, Phase::Running | Phase::Pending))
        });
        quiet = if live { 0 } else { quiet + 1 };
    }
    drop(net);
    drop(held);
    Ok(())
}

/// The network of `conf` with its DNS server.
fn dns_builder(conf: &NetConf) -> Result<crate::NetworkBuilder, String> {
    let dns = conf
        .dns_server
        .as_ref()
        .ok_or("the configuration does not ask for dnsServer")?;
    let mut b = network_builder(conf).map_err(|e| e.to_string())?.dns(true);
    if let Some(domain) = &dns.domain {
        b = b.dns_domain(domain.clone());
    }
    Ok(b.dns_upstream(match &dns.upstream {
        Upstream::Host => DnsUpstream::HostResolvConf,
        Upstream::None => DnsUpstream::None,
        Upstream::Servers(s) => DnsUpstream::Servers(s.clone()),
    }))
}

/// `ready` on stdout, then stdout closed (the ADD stops reading there).
fn say_ready() {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(b"ready\n");
    let _ = out.flush();
    drop(out);
    crate::sys::stdout_to_dev_null();
}

fn lock_path(store: &Path) -> PathBuf {
    store.join(LOCK)
}

fn open_lock(path: &Path) -> Result<File, CniError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| CniError::io(format!("cannot open {}", path.display()), e.to_string()))
}
