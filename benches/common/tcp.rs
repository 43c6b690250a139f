//! The TCP servers and clients of the port and uplink benches: a sink that
//! counts what it read, a one-byte hello, a bulk send and a connection
//! rate.
#![allow(dead_code)] // each bench uses a part

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Serve `listener` forever on a thread, one connection at a time, with `f`.
pub fn serve(listener: TcpListener, f: fn(TcpStream) -> std::io::Result<()>) {
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            let _ = s.set_nodelay(true);
            let _ = f(s);
        }
    });
}

/// Read to EOF, then answer with the byte count.
pub fn sink(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    loop {
        match s.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    s.write_all(&total.to_le_bytes())
}

/// Read one byte, answer one byte, close.
pub fn hello(mut s: TcpStream) -> std::io::Result<()> {
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    s.write_all(&b)
}

/// MiB/s of sending `mib` MiB to the [`sink`] at `at` (and reading its count).
pub fn throughput(at: SocketAddr, mib: usize) -> AnyResult<f64> {
    let chunk = vec![7u8; 128 * 1024];
    let t = Instant::now();
    let mut s = TcpStream::connect(at)?;
    for _ in 0..mib * 8 {
        s.write_all(&chunk)?;
    }
    s.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)?;
    let secs = t.elapsed().as_secs_f64();
    let want = (mib * 1024 * 1024) as u64;
    if u64::from_le_bytes(count) != want {
        return Err(format!(
            "sink at {at} got {} of {want} bytes",
            u64::from_le_bytes(count)
        )
        .into());
    }
    Ok(mib as f64 / secs)
}

/// Connections per second of `count` connections to the [`hello`] at
/// `at` (connect, 1 byte each way, close), and the time of each in `each`.
pub fn conn_rate(at: SocketAddr, count: usize, each: &mut Vec<Duration>) -> AnyResult<f64> {
    let t = Instant::now();
    for _ in 0..count {
        let c = Instant::now();
        let mut s = TcpStream::connect(at)?;
        s.set_nodelay(true)?;
        s.write_all(b"x")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        drop(s);
        each.push(c.elapsed());
    }
    Ok(count as f64 / t.elapsed().as_secs_f64())
}
