//! What the benches share.

use std::time::Duration;

/// (count, median, p95) of `xs` in units of `1/per_second` s (1e3: ms,
/// 1e6: µs). The median of an even count is the mean of the two middle
/// values; p95 is by nearest rank, as benches/peers/lib/summarize.py computes it.
pub fn stats(xs: &[Duration], per_second: f64) -> Option<(usize, f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = xs.iter().map(|d| d.as_secs_f64() * per_second).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let rank = (n * 95).div_ceil(100).max(1);
    Some((n, median, v[rank - 1]))
}
