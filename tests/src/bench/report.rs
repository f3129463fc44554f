//! `/proc` readings, percentiles and resource limits.

use serde_json::{json, Value};

/// `VmRSS` of process `pid` in kB, if readable.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix("VmRSS:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// User + system CPU time of process `pid` (or this process for `None`) in seconds.
pub fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tck = if tck > 0 { tck as f64 } else { 100.0 };
    Some((utime + stime) as f64 / tck)
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit; returns the soft limit now in force.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
pub fn raise_nofile_limit() -> Option<u64> {
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        Some(lim.rlim_cur as u64)
    }
}

/// Exact percentiles (nearest rank) of latency samples in nanoseconds, as microseconds.
pub fn latency_json(samples: &mut [u64]) -> Value {
    if samples.is_empty() {
        return Value::Null;
    }
    samples.sort_unstable();
    let n = samples.len();
    let at = |p: f64| -> f64 {
        let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
        samples[rank - 1] as f64 / 1000.0
    };
    let mean = samples.iter().map(|&s| s as f64).sum::<f64>() / n as f64 / 1000.0;
    json!({
        "count": n,
        "min": round1(samples[0] as f64 / 1000.0),
        "mean": round1(mean),
        "p50": round1(at(0.50)),
        "p90": round1(at(0.90)),
        "p99": round1(at(0.99)),
        "p999": round1(at(0.999)),
        "max": round1(samples[n - 1] as f64 / 1000.0),
    })
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut samples: Vec<u64> = (1..=1000).rev().map(|i| i * 1000).collect();
        let v = latency_json(&mut samples);
        assert_eq!(v["p50"], 500.0);
        assert_eq!(v["p90"], 900.0);
        assert_eq!(v["p99"], 990.0);
        assert_eq!(v["p999"], 999.0);
        assert_eq!(v["max"], 1000.0);
        assert_eq!(v["count"], 1000);
    }

    #[test]
    fn own_process_readings() {
        assert!(rss_kb(std::process::id()).unwrap() > 0);
        assert!(cpu_secs(None).is_some());
    }
}
