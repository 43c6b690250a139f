//! Process identities that survive PID reuse: a PID with its start time,
//! read from `/proc`, for records, holders and the processes that made
//! them.

use std::sync::OnceLock;

use nix::unistd::{getpid, Pid};

use crate::error::Result;

/// A process identity that survives PID reuse: the PID and its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ident {
    pub pid: i32,
    pub start: u64,
}

/// The identity of this process, for records (asked once per process, and
/// first when a network is built).
pub(crate) fn creator() -> Result<Ident> {
    static ME: OnceLock<(i32, u64)> = OnceLock::new();
    let pid = getpid();
    let (p, start) = *ME.get_or_init(|| (pid.as_raw(), proc_start_time(pid).unwrap_or(0)));
    if p == pid.as_raw() {
        return Ok(Ident { pid: p, start });
    }
    // Forked since: ask again.
    Ok(Ident {
        pid: pid.as_raw(),
        start: proc_start_time(pid).unwrap_or(0),
    })
}

/// Whether the process `pid` that started at `start_time` is still alive
/// (a reused PID has another start time). Zombies count as dead.
pub(crate) fn is_alive(pid: i32, start_time: u64) -> bool {
    let pid = Pid::from_raw(pid);
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let start = fields.nth(18).and_then(|s| s.parse::<u64>().ok());
            state != Some("Z") && state != Some("X") && start == Some(start_time)
        }
        Err(_) => false,
    }
}

/// `/proc/PID/stat` field 22, the start time in clock ticks since boot.
pub(crate) fn proc_start_time(pid: Pid) -> Option<u64> {
    // One read into a buffer large enough for any stat line (open, read,
    // close: read_to_string would add a statx and a read per doubling).
    let mut buf = [0u8; 1024];
    let file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let n = std::io::Read::read(&mut &file, &mut buf).ok()?;
    let stat = std::str::from_utf8(&buf[..n]).ok()?;
    // Field 2 (comm) may hold spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts at field 3, so field 22 is index 19.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A fresh id for a sandbox instance: unique per process by a counter, and
/// across processes by the PID and the clock.
pub(crate) fn instance_id() -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:x}-{:x}-{seq:x}", std::process::id(), nanos)
}
