//! The process metrics every Prometheus client exports (`process_*`), read from `/proc` at
//! scrape time as Go's client reads them: CPU seconds, resident and virtual memory, open
//! and maximum file descriptors, start time. `etcdctl check datascale` reads
//! `process_resident_memory_bytes` from `/metrics` before and after its writes.
//! Go's runtime metrics (`go_*`) have one meaningful equivalent here, the thread count,
//! exported as `process_threads` (the name Rust's `prometheus` crate gives it).

use std::path::Path;

use super::prom::Text;

/// What `/proc/self` says about this process; `None` where a file could not be read.
#[derive(Debug, Default, PartialEq)]
struct Process {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    threads: Option<f64>,
    start_time_seconds: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
    max_address_space: Option<f64>,
}

/// Adds the `process_*` families of this process to `out`.
pub fn render(out: &mut Text) {
    let p = read(Path::new("/proc"));
    let families: [(&str, &str, &str, Option<f64>); 8] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.resident_bytes,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            p.virtual_bytes,
        ),
        (
            "process_virtual_memory_max_bytes",
            "gauge",
            "Maximum amount of virtual memory available in bytes.",
            p.max_address_space,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            p.open_fds,
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            p.max_fds,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        ),
        (
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            p.threads,
        ),
    ];
    for (name, kind, help, v) in families {
        if let Some(v) = v {
            out.family(name, kind, help).sample(name, &[], v);
        }
    }
}

/// Reads the process under `proc` (`/proc`, or a test's copy).
fn read(proc: &Path) -> Process {
    let me = proc.join("self");
    let ticks = clock_ticks();
    let stat = std::fs::read_to_string(me.join("stat")).ok();
    let stat = stat.as_deref().and_then(stat_fields);
    let status = std::fs::read_to_string(me.join("status")).unwrap_or_default();
    let limits = std::fs::read_to_string(me.join("limits")).unwrap_or_default();
    let boot = std::fs::read_to_string(proc.join("stat"))
        .ok()
        .and_then(|s| field_after(&s, "btime"));
    Process {
        cpu_seconds: stat
            .as_ref()
            .and_then(|f| Some((num(f, 11)? + num(f, 12)?) / ticks)),
        resident_bytes: kib(&status, "VmRSS:"),
        virtual_bytes: kib(&status, "VmSize:"),
        threads: field_after(&status, "Threads:"),
        start_time_seconds: stat
            .as_ref()
            .and_then(|f| Some(boot? + num(f, 19)? / ticks)),
        open_fds: std::fs::read_dir(me.join("fd"))
            .ok()
            .map(|d| d.count() as f64),
        max_fds: soft_limit(&limits, "Max open files"),
        max_address_space: soft_limit(&limits, "Max address space"),
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces and
/// parentheses): index 0 is the state (field 3 of proc(5)), 11 utime, 12 stime,
/// 19 starttime.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

fn num(fields: &[&str], i: usize) -> Option<f64> {
    fields.get(i)?.parse().ok()
}

/// The number after `key` on the line that starts with it.
fn field_after(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// A `/proc/<pid>/status` size in kB, in bytes.
fn kib(status: &str, key: &str) -> Option<f64> {
    field_after(status, key).map(|k| k * 1024.0)
}

/// The soft limit of `/proc/<pid>/limits`' line `name`; "unlimited" as Go's procfs reads
/// it (the largest u64).
fn soft_limit(limits: &str, name: &str) -> Option<f64> {
    let rest = limits.lines().find_map(|l| l.strip_prefix(name))?;
    match rest.split_whitespace().next()? {
        "unlimited" => Some(u64::MAX as f64),
        v => v.parse().ok(),
    }
}

/// Clock ticks per second, the unit of CPU times and start times in `/proc`.
#[allow(unsafe_code)] // sysconf(3): std has no call for it
fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system and has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_proc_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = dir.path().join("self");
        std::fs::create_dir_all(me.join("fd")).expect("mkdir");
        for fd in ["0", "1", "2"] {
            std::fs::write(me.join("fd").join(fd), "").expect("fd");
        }
        // A command name with a space and a parenthesis, as a thread may be named.
        let mut stat = "42 (a (b) c) S".to_string();
        for i in 4..=52 {
            stat.push_str(&format!(" {}", i * 10));
        }
        std::fs::write(me.join("stat"), stat).expect("stat");
        std::fs::write(
            me.join("status"),
            "Name:\tx\nVmSize:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t7\n",
        )
        .expect("status");
        std::fs::write(
            me.join("limits"),
            "Limit                     Soft Limit           Hard Limit           Units\n\
             Max open files            1024                 524288               files\n\
             Max address space         unlimited            unlimited            bytes\n",
        )
        .expect("limits");
        std::fs::write(dir.path().join("stat"), "cpu 1 2 3\nbtime 1700000000\n").expect("stat");
        let p = read(dir.path());
        let t = clock_ticks();
        assert_eq!(p.cpu_seconds, Some((140.0 + 150.0) / t));
        assert_eq!(p.start_time_seconds, Some(1_700_000_000.0 + 220.0 / t));
        assert_eq!(p.resident_bytes, Some(1024.0 * 1024.0));
        assert_eq!(p.virtual_bytes, Some(2048.0 * 1024.0));
        assert_eq!(p.threads, Some(7.0));
        assert_eq!(p.open_fds, Some(3.0));
        assert_eq!(p.max_fds, Some(1024.0));
        assert_eq!(p.max_address_space, Some(u64::MAX as f64));
    }

    #[test]
    fn this_process_is_read() {
        let p = read(Path::new("/proc"));
        assert!(p.resident_bytes.is_some_and(|r| r > 1e5), "{p:?}");
        assert!(p.cpu_seconds.is_some() && p.start_time_seconds.is_some());
        assert!(p.open_fds.is_some_and(|n| n >= 3.0));
    }
}
