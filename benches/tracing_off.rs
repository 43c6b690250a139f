//! What podnet's diagnostics cost when no subscriber listens: a disabled
//! `tracing` event and span beside an empty loop of the same length,
//! measured in the same run.
//!
//! ```text
//! cargo bench --bench tracing_off
//! ```
//!
//! A create passes a handful of callsites (its span, the netlink batches
//! of the veth and the inside); each disabled one is a relaxed atomic load
//! of the global max level. Nothing is asserted.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

/// Iterations per sample, and samples.
const ITERS: u32 = 1_000_000;
const SAMPLES: usize = 31;

fn sample(f: impl Fn(u32)) -> Duration {
    let t = Instant::now();
    for i in 0..ITERS {
        f(black_box(i));
    }
    t.elapsed()
}

fn main() {
    let (mut empty, mut event, mut span) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        empty.push(sample(|i| {
            black_box(i);
        }));
        event.push(sample(|i| {
            tracing::debug!(requests = i, kinds = "NewLink", "netlink batch");
        }));
        span.push(sample(|i| {
            let s = tracing::info_span!("podnet.create", sandbox = i);
            black_box(&s);
        }));
    }
    let ns = |xs: &[Duration]| {
        common::stats(xs, 1e9 / f64::from(ITERS)).map_or(f64::NAN, |(_, median, _)| median)
    };
    let (e, ev, sp) = (ns(&empty), ns(&event), ns(&span));
    println!("no subscriber, {SAMPLES} samples of {ITERS} iterations, medians per iteration:");
    println!("  empty loop        {e:8.2} ns");
    println!(
        "  disabled event    {ev:8.2} ns   ({:.1}x the empty loop)",
        ev / e
    );
    println!(
        "  disabled span     {sp:8.2} ns   ({:.1}x the empty loop)",
        sp / e
    );
}
