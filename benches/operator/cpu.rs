//! Where the machine's CPU goes per job: user+system time of every process a phase runs on
//! (the stack's Temporal server, kube-apiserver and etcd, the operator's worker, controller and
//! facade, and this harness as the client), so the operator's added cost is shown per process
//! and the throughput ratio a CPU-bound machine allows follows from it.

use serde_json::{Map, Value, json};
use std::process::Command;

/// The processes measured, by name and pid.
pub struct Meter {
    processes: Vec<(&'static str, u32)>,
    ticks_per_second: f64,
}

/// CPU seconds of each measured process at one moment.
pub struct Sample(Vec<f64>);

/// CPU seconds per process accumulated over phases, and the jobs they ran.
#[derive(Default)]
pub struct Spent {
    seconds: Vec<f64>,
    jobs: usize,
}

impl Meter {
    /// The stack's processes (pid files in `$IJ_STACK_DIR`), then `ours`, then this process.
    pub fn new(ours: &[(&'static str, u32)]) -> Self {
        let dir = std::env::var("IJ_STACK_DIR").unwrap_or_default();
        let pid = |file: &str| {
            std::fs::read_to_string(format!("{dir}/{file}.pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0)
        };
        let mut processes = vec![
            ("Temporal server", pid("temporal")),
            ("kube-apiserver", pid("kube-apiserver")),
            ("etcd", pid("etcd")),
        ];
        processes.extend_from_slice(ours);
        processes.push(("benchmark client", std::process::id()));
        let ticks_per_second = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0);
        Self {
            processes,
            ticks_per_second,
        }
    }

    /// User plus system CPU seconds one process has used so far (NaN when it cannot be read).
    pub fn seconds(&self, pid: u32) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        (ticks(11) + ticks(12)) / self.ticks_per_second
    }

    /// Every process's CPU seconds now.
    pub fn sample(&self) -> Sample {
        Sample(
            self.processes
                .iter()
                .map(|&(_, pid)| self.seconds(pid))
                .collect(),
        )
    }

    /// The processes' names, in sample order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.processes.iter().map(|&(name, _)| name)
    }
}

impl Spent {
    /// Adds what each process spent between `before` and `after` on `jobs` jobs.
    pub fn add(&mut self, before: &Sample, after: &Sample, jobs: usize) {
        self.seconds.resize(before.0.len(), 0.0);
        for (total, (b, a)) in self.seconds.iter_mut().zip(before.0.iter().zip(&after.0)) {
            *total += a - b;
        }
        self.jobs += jobs;
    }

    /// Milliseconds per job of each process, in sample order.
    pub fn per_job_ms(&self) -> Vec<f64> {
        let jobs = self.jobs.max(1) as f64;
        self.seconds.iter().map(|s| s * 1000.0 / jobs).collect()
    }

    /// Milliseconds per job of all processes together.
    pub fn total_ms(&self) -> f64 {
        self.per_job_ms().iter().sum()
    }
}

/// The CPU of raw Temporal against the operator's at each concurrency level: one row per
/// process, the totals, and the throughput ratio the totals allow on a CPU-bound machine.
pub fn report(meter: &Meter, levels: &[(usize, &Spent, &Spent)]) -> Value {
    let mut header = String::from("| process, CPU ms per job |");
    let mut rule = String::from("|---|");
    for (c, _, _) in levels {
        header.push_str(&format!(
            " raw Temporal, {c} in flight | operator, {c} in flight |"
        ));
        rule.push_str("---|---|");
    }
    println!("\nCPU per job (user+sys of each process over the phase / jobs)\n");
    println!("{header}\n{rule}");
    let per_job: Vec<(Vec<f64>, Vec<f64>)> = levels
        .iter()
        .map(|(_, raw, op)| (raw.per_job_ms(), op.per_job_ms()))
        .collect();
    for (i, name) in meter.names().enumerate() {
        let cells: String = per_job
            .iter()
            .map(|(raw, op)| format!(" {:.2} | {:.2} |", raw[i], op[i]))
            .collect();
        println!("| {name} |{cells}");
    }
    let totals: String = levels
        .iter()
        .map(|(_, raw, op)| format!(" {:.2} | {:.2} |", raw.total_ms(), op.total_ms()))
        .collect();
    println!("| total |{totals}");
    let ceilings: String = levels
        .iter()
        .map(|(_, raw, op)| format!(" | {:.2} |", raw.total_ms() / op.total_ms()))
        .collect();
    println!("| CPU-bound ceiling of operator / raw (raw total / operator total) |{ceilings}");
    let by_name = |ms: &[f64]| {
        meter
            .names()
            .zip(ms)
            .map(|(n, v)| (n.to_owned(), json!(v)))
            .collect::<Map<String, Value>>()
    };
    Value::Array(
        levels
            .iter()
            .zip(&per_job)
            .map(|((c, raw, op), (raw_ms, op_ms))| {
                json!({"in_flight": c,
                    "raw_temporal_ms_per_job": by_name(raw_ms), "operator_ms_per_job": by_name(op_ms),
                    "raw_total_ms": raw.total_ms(), "operator_total_ms": op.total_ms(),
                    "cpu_bound_ratio_ceiling": raw.total_ms() / op.total_ms()})
            })
            .collect(),
    )
}
