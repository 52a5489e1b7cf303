//! CPU time during a blast: the server's, the generator's own, the sink's (each process's
//! user and system time from /proc), and the whole machine's split (/proc/stat), so a report
//! tells which of them used up the shared cores.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{json, Value};

/// User and system CPU seconds of process `pid` (all threads) so far.
pub fn process_cpu(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (user, system) = parse_process_stat(&stat)?;
    let hz = ticks_per_second()?;
    Some((user as f64 / hz, system as f64 / hz))
}

fn ticks_per_second() -> Option<f64> {
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then_some(hz as f64)
}

/// utime and stime (clock ticks) from the text of /proc/PID/stat.
pub fn parse_process_stat(stat: &str) -> Option<(u64, u64)> {
    // The command name (field 2) may hold spaces and parentheses: count fields after its
    // last closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields 14 and 15 of proc(5) (utime, stime), the 12th and 13th after the name.
    Some((fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?))
}

/// Time on a CPU and time runnable but waiting for one, in ns (the first two fields of
/// /proc/PID/task/TID/schedstat, Documentation/scheduler/sched-stats.rst).
pub fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut fields = text.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((fields.next()??, fields.next()??))
}

/// One thread's times so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadTimes {
    pub name: String,
    /// On a CPU and runnable but waiting for one, ns (schedstat).
    pub run_ns: u64,
    pub wait_ns: u64,
    /// User and system time, clock ticks (stat).
    pub user_ticks: u64,
    pub system_ticks: u64,
}

/// Every thread of `pid` by id.
pub fn thread_times(pid: u32) -> BTreeMap<u32, ThreadTimes> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let read = |f: &str| std::fs::read_to_string(entry.path().join(f)).ok();
        let sched = read("schedstat").as_deref().and_then(parse_schedstat);
        let stat = read("stat").as_deref().and_then(parse_process_stat);
        if let (Some(name), Some((run_ns, wait_ns)), Some((user_ticks, system_ticks))) =
            (read("comm"), sched, stat)
        {
            let name = name.trim().to_string();
            out.insert(
                tid,
                ThreadTimes {
                    name,
                    run_ns,
                    wait_ns,
                    user_ticks,
                    system_ticks,
                },
            );
        }
    }
    out
}

/// Per thread that ran during a window of `secs` seconds: cores used (user and system split),
/// and cores' worth of time spent runnable but waiting for a CPU (busy threads only).
fn thread_use(
    before: &BTreeMap<u32, ThreadTimes>,
    after: &BTreeMap<u32, ThreadTimes>,
    secs: f64,
    ticks_per_second: f64,
) -> Value {
    let mut threads = Vec::new();
    let (mut run_total, mut wait_total) = (0.0, 0.0);
    let none = ThreadTimes::default();
    for (tid, a) in after {
        let b = before.get(tid).unwrap_or(&none);
        let ns = |x: u64, y: u64| x.saturating_sub(y) as f64 / 1e9 / secs;
        let ticks = |x: u64, y: u64| x.saturating_sub(y) as f64 / ticks_per_second / secs;
        let run = ns(a.run_ns, b.run_ns);
        let wait = ns(a.wait_ns, b.wait_ns);
        run_total += run;
        wait_total += wait;
        if run >= 0.01 || wait >= 0.01 {
            threads.push(json!({
                "tid": tid, "name": a.name, "cores": run, "waiting_cores": wait,
                "user_cores": ticks(a.user_ticks, b.user_ticks),
                "system_cores": ticks(a.system_ticks, b.system_ticks),
            }));
        }
    }
    json!({"cores": run_total, "waiting_cores": wait_total, "busy": threads})
}

/// The machine's CPU time by kind, in clock ticks (the `cpu` line of /proc/stat, proc(5)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineTicks {
    pub user: u64,
    pub system: u64,
    pub softirq: u64,
    pub idle: u64,
    pub total: u64,
}

/// The `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal ...
pub fn parse_machine_stat(text: &str) -> Option<MachineTicks> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    Some(MachineTicks {
        user: v[0] + v[1],
        system: v[2] + v[5],
        softirq: v[6],
        idle: v[3] + v[4],
        // guest time (fields 9, 10) is already inside user.
        total: v[..8].iter().sum(),
    })
}

fn machine_ticks() -> Option<MachineTicks> {
    parse_machine_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Snapshots at the start of a blast.
pub struct CpuWatch {
    start: Instant,
    server_pid: Option<u32>,
    sink_pid: Option<u32>,
    server: Option<(f64, f64)>,
    generator: Option<(f64, f64)>,
    sink: Option<(f64, f64)>,
    machine: Option<MachineTicks>,
    server_threads: BTreeMap<u32, ThreadTimes>,
}

/// What a [`CpuWatch`] saw between its start and [`CpuWatch::finish`].
pub struct CpuUse(Value);

impl CpuWatch {
    pub fn start(server_pid: Option<u32>, sink_pid: Option<u32>) -> CpuWatch {
        CpuWatch {
            start: Instant::now(),
            server_pid,
            sink_pid,
            server: server_pid.and_then(process_cpu),
            generator: process_cpu(std::process::id()),
            sink: sink_pid.and_then(process_cpu),
            machine: machine_ticks(),
            server_threads: server_pid.map(thread_times).unwrap_or_default(),
        }
    }

    pub fn finish(&self) -> CpuUse {
        let secs = self.start.elapsed().as_secs_f64();
        let delta = |before: Option<(f64, f64)>, pid: Option<u32>| {
            before
                .zip(pid.and_then(process_cpu))
                .map(|(b, a)| {
                    json!({
                        "user_s": a.0 - b.0, "system_s": a.1 - b.1, "seconds": secs,
                        "cores": (a.0 - b.0 + a.1 - b.1) / secs.max(1e-9),
                    })
                })
                .unwrap_or(Value::Null)
        };
        let machine = self
            .machine
            .zip(machine_ticks())
            .map(|(b, a)| {
                let total = (a.total - b.total).max(1) as f64;
                let share = |x: u64, y: u64| (x - y) as f64 / total;
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
                json!({
                    "user": share(a.user, b.user), "system": share(a.system, b.system),
                    "softirq": share(a.softirq, b.softirq), "idle": share(a.idle, b.idle),
                    "cpus": cpus,
                    "busy_cores": (1.0 - share(a.idle, b.idle)) * cpus as f64,
                })
            })
            .unwrap_or(Value::Null);
        let threads = self
            .server_pid
            .map(|pid| {
                let after = thread_times(pid);
                let hz = ticks_per_second().unwrap_or(100.0);
                thread_use(&self.server_threads, &after, secs.max(1e-9), hz)
            })
            .unwrap_or(Value::Null);
        CpuUse(json!({
            "server_threads": threads,
            "server_cpu": delta(self.server, self.server_pid),
            "generator_cpu": delta(self.generator, Some(std::process::id())),
            "sink_cpu": delta(self.sink, self.sink_pid),
            "machine_cpu_share": machine,
        }))
    }
}

impl CpuUse {
    /// Adds `server_cpu`, `generator_cpu`, `sink_cpu` and `machine_cpu_share` to `report`.
    pub fn add_to(self, report: &mut Value) {
        if let (Some(r), Value::Object(m)) = (report.as_object_mut(), self.0) {
            r.extend(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stat_fields_after_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 731 52 0 0 20 0 3 0 \
                    99 0 0";
        assert_eq!(parse_process_stat(stat), Some((731, 52)));
        assert_eq!(parse_process_stat("4242 (x) S 1"), None);
    }

    #[test]
    fn schedstat_gives_run_and_wait() {
        assert_eq!(parse_schedstat("123456 7890 42\n"), Some((123456, 7890)));
        assert_eq!(parse_schedstat("12"), None);
    }

    #[test]
    fn thread_use_is_per_second_and_skips_idle_threads() {
        let t = |run_ns, wait_ns, user_ticks, system_ticks| ThreadTimes {
            name: "w".into(),
            run_ns,
            wait_ns,
            user_ticks,
            system_ticks,
        };
        let before = BTreeMap::from([(1, t(0, 0, 0, 0)), (2, t(5_000_000_000, 0, 400, 100))]);
        // Thread 1 ran 1 s (0.2 s user, 0.8 s system) and waited 0.5 s of 2 s; thread 2 did
        // nothing; thread 3 is new.
        let after = BTreeMap::from([
            (1, t(1_000_000_000, 500_000_000, 20, 80)),
            (2, t(5_000_000_000, 0, 400, 100)),
            (3, t(200_000_000, 0, 10, 10)),
        ]);
        let u = thread_use(&before, &after, 2.0, 100.0);
        assert_eq!(u["cores"], json!(0.6));
        assert_eq!(u["waiting_cores"], json!(0.25));
        let busy = u["busy"].as_array().unwrap();
        let tids: Vec<u64> = busy.iter().map(|b| b["tid"].as_u64().unwrap()).collect();
        assert_eq!(tids, vec![1, 3]);
        assert_eq!(busy[0]["user_cores"], json!(0.1));
        assert_eq!(busy[0]["system_cores"], json!(0.4));
    }

    #[test]
    fn machine_stat_sums_the_kinds() {
        let text = "cpu  100 5 40 1000 7 3 20 0 0 0\ncpu0 50 2 20 500 3 1 10 0 0 0\n";
        let t = parse_machine_stat(text).unwrap();
        assert_eq!(
            t,
            MachineTicks {
                user: 105,
                system: 43,
                softirq: 20,
                idle: 1007,
                total: 1175
            }
        );
        assert_eq!(parse_machine_stat("cpu0 1 2 3\n"), None);
    }
}
