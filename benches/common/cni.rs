//! Exec'ing a CNI plugin as a runtime does, for the benches that time
//! `podnet-cni` (benches/cni.rs, benches/store_disk.rs): the plugin with
//! its configuration, and a namespace held the way a pause container
//! holds one.
#![allow(dead_code)] // the other benches share this module without it

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Where Debian puts the reference plugins (`CNI_PATH` of every exec).
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// A plugin as the bench runs it.
pub struct Plugin {
    /// Its name in the tables.
    pub name: &'static str,
    /// The executable.
    pub exe: PathBuf,
    /// The configuration on its stdin.
    pub conf: String,
}

impl Plugin {
    /// Run `command` for container `i` in `netns`; its duration.
    pub fn exec(&self, command: &str, i: usize, netns: &Path) -> AnyResult<Duration> {
        let t = Instant::now();
        let mut child = Command::new(&self.exe)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("bench{i}"))
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", REFERENCE_DIR)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .ok_or("no stdin")?
            .write_all(self.conf.as_bytes())?;
        let out = child.wait_with_output()?;
        let took = t.elapsed();
        if !out.status.success() {
            return Err(format!(
                "{} {command} {i}: {} {}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(took)
    }
}

/// A namespace held by a `sleep` of the bench's, as a pause container
/// holds one; ended when dropped.
pub struct Holder(Child);

impl Holder {
    /// A fresh namespace, held.
    pub fn new() -> AnyResult<Holder> {
        let mut cmd = Command::new("sleep");
        cmd.arg("3600");
        // SAFETY: between fork and exec the child only calls unshare(2).
        unsafe {
            cmd.pre_exec(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        Ok(Holder(cmd.spawn()?))
    }

    /// Its path, as a runtime passes it in `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.0.id()))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The configuration of plugin `kind` (`podnet-cni` or `bridge`) on
/// `bridge` with pool `subnet` and its gateway, `isGateway`, `ipMasq` and
/// a default route, its store in `data` (`ipam.dataDir`).
pub fn conf(kind: &str, bridge: &str, subnet: &str, gw: &str, data: &Path) -> String {
    let ipam = format!(
        r#"{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"{subnet}","gateway":"{gw}"}}]],"routes":[{{"dst":"0.0.0.0/0"}}]}}"#,
        data.display()
    );
    format!(
        r#"{{"cniVersion":"1.0.0","name":"bench-{kind}","type":"{kind}","bridge":"{bridge}","isGateway":true,"ipMasq":true,"ipam":{ipam}}}"#
    )
}
