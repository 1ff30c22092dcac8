//! The results table: one row per figure, with its target and the reference
//! measured in the same run.

use std::time::Duration;

pub struct Row {
    pub workload: String,
    pub figure: String,
    pub measured: String,
    pub target: String,
    pub reference: String,
    /// None: a figure without a target (context for the others).
    pub pass: Option<bool>,
}

impl Row {
    fn new(workload: &str, figure: &str) -> Self {
        Row {
            workload: workload.into(),
            figure: figure.into(),
            measured: String::new(),
            target: "-".into(),
            reference: "-".into(),
            pass: None,
        }
    }

    /// `value` must be at least `min_ratio` of `reference`.
    pub fn ratio(
        workload: &str,
        figure: &str,
        value: f64,
        reference: f64,
        min_ratio: f64,
        label: &str,
    ) -> Self {
        let ratio = value / reference.max(1e-9);
        Row {
            measured: format!("{} ({:.0}% of ref)", num(value), ratio * 100.0),
            target: format!("≥ {:.0}% of ref", min_ratio * 100.0),
            reference: format!("{} {label}", num(reference)),
            pass: Some(ratio >= min_ratio),
            ..Row::new(workload, figure)
        }
    }

    pub fn at_most(workload: &str, figure: &str, value: f64, max: f64, reference: &str) -> Self {
        Row {
            measured: num(value),
            target: format!("≤ {}", num(max)),
            reference: reference.into(),
            pass: Some(value <= max),
            ..Row::new(workload, figure)
        }
    }

    pub fn at_least(workload: &str, figure: &str, value: f64, min: f64, reference: &str) -> Self {
        Row {
            measured: num(value),
            target: format!("≥ {}", num(min)),
            reference: reference.into(),
            pass: Some(value >= min),
            ..Row::new(workload, figure)
        }
    }

    pub fn info(workload: &str, figure: &str, value: f64, reference: &str) -> Self {
        Row {
            measured: num(value),
            reference: reference.into(),
            ..Row::new(workload, figure)
        }
    }

    pub fn failed(workload: &str, error: &str) -> Self {
        Row {
            measured: "workload failed".into(),
            reference: error.replace('\n', " ").replace('|', "/"),
            pass: Some(false),
            ..Row::new(workload, "(error)")
        }
    }

    /// Requests that failed make the row fail: a fast error is not a result.
    /// Adds context to the reference column.
    pub fn with_note(mut self, note: &str) -> Self {
        if self.reference == "-" {
            self.reference = note.into();
        } else {
            self.reference = format!("{}; {note}", self.reference);
        }
        self
    }

    pub fn with_errors(mut self, errors: u64) -> Self {
        if errors > 0 {
            self.measured = format!("{} [{errors} errors]", self.measured);
            self.pass = Some(false);
        }
        self
    }
}

fn num(v: f64) -> String {
    if v >= 100.0 {
        let s = format!("{:.0}", v);
        // Thousands separators keep wide numbers readable.
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn render(rows: &[Row], took: Duration) -> String {
    let mut out = String::from("# agentd benchmark results\n\n");
    out.push_str(&format!("{}\n\n", machine()));
    out.push_str("| workload | figure | measured | target | reference (same run) | |\n|---|---|---|---|---|---|\n");
    for r in rows {
        let mark = match r.pass {
            Some(true) => "ok",
            Some(false) => "MISS",
            None => "",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.workload, r.figure, r.measured, r.target, r.reference, mark
        ));
    }
    let missed = rows.iter().filter(|r| r.pass == Some(false)).count();
    out.push_str(&format!(
        "\n{} figures with a target, {} missed; the suite took {:.0} s.\n",
        rows.iter().filter(|r| r.pass.is_some()).count(),
        missed,
        took.as_secs_f64()
    ));
    out
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(crate::stack::REPO)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "Machine: {cores} cores ({model}), {:.1} GiB memory. Run at {date}, commit {rev}.\n\
         Load generators run on the same machine (wrk for HTTP throughput, tonic and reqwest clients in the bench).",
        mem_kb as f64 / 1024.0 / 1024.0
    )
}
