//! One row per measured run, the table printed at the end, its JSON, and an SVG of the ratios.

use std::fmt::Write as _;

use serde::Serialize;

/// Who did the work in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    /// hubbus.
    Hubbus,
    /// The raw client crate doing the same work.
    Raw,
    /// The server's own load tool (a ceiling, not a client).
    Server,
}

impl System {
    fn as_str(self) -> &'static str {
        match self {
            System::Hubbus => "hubbus",
            System::Raw => "raw",
            System::Server => "server",
        }
    }
}

/// Publish-to-deliver latency, in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
}

impl Latency {
    /// Percentiles of a histogram recorded in nanoseconds.
    pub fn of(histogram: &hdrhistogram::Histogram<u64>) -> Self {
        let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1_000.0;
        Latency {
            p50_us: us(0.50),
            p99_us: us(0.99),
            p999_us: us(0.999),
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `S1` ... `S6`, `scale`.
    pub scenario: &'static str,
    /// What was run, e.g. `subs=4 size=16B`.
    pub case: String,
    /// What the raw side did (the equivalent of the hubbus setting).
    pub raw: String,
    /// Who ran it.
    pub system: System,
    /// Messages published.
    pub messages: u64,
    /// Wall time of the measured part, seconds.
    pub seconds: f64,
    /// Messages per second (published, or delivered end to end where the case says so).
    pub msgs_per_sec: f64,
    /// hubbus / raw msgs/s of the same case in the same run (hubbus rows only).
    pub ratio: Option<f64>,
    /// Latency percentiles where the case measures them.
    pub latency: Option<Latency>,
    /// Messages that should have arrived and did not, and were not counted as dropped.
    pub lost: u64,
    /// Messages dropped and counted (slow subscribers).
    pub dropped: u64,
    /// Failed publishes.
    pub errors: u64,
    /// Peak resident memory of the process during the run, KiB.
    pub peak_rss_kib: u64,
    /// Free-form remarks (what was checked).
    pub note: String,
}

impl Row {
    /// A row with the counters at zero.
    pub fn new(scenario: &'static str, case: impl Into<String>, system: System) -> Self {
        Row {
            scenario,
            case: case.into(),
            raw: String::new(),
            system,
            messages: 0,
            seconds: 0.0,
            msgs_per_sec: 0.0,
            ratio: None,
            latency: None,
            lost: 0,
            dropped: 0,
            errors: 0,
            peak_rss_kib: 0,
            note: String::new(),
        }
    }

    /// Sets the message count and time, and the rate from them.
    pub fn timed(mut self, messages: u64, seconds: f64) -> Self {
        self.messages = messages;
        self.seconds = seconds;
        self.msgs_per_sec = messages as f64 / seconds.max(1e-9);
        self
    }
}

/// Fills in the ratio of every hubbus row against the raw row of the same scenario and case.
pub fn fill_ratios(rows: &mut [Row]) {
    let raw: Vec<(&'static str, String, f64)> = rows
        .iter()
        .filter(|r| r.system == System::Raw)
        .map(|r| (r.scenario, r.case.clone(), r.msgs_per_sec))
        .collect();
    // A latency case runs both sides at the same offered rate: its percentiles compare, its
    // rates do not.
    for row in rows
        .iter_mut()
        .filter(|r| r.system == System::Hubbus && r.latency.is_none())
    {
        if let Some((_, _, rate)) = raw
            .iter()
            .find(|(s, c, _)| *s == row.scenario && *c == row.case)
        {
            row.ratio = Some(row.msgs_per_sec / rate.max(1e-9));
        }
    }
}

/// The table, one line per row.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let head = HEADINGS.map(String::from);
    for cells in std::iter::once(head).chain(rows.iter().map(cells)) {
        let [
            scenario,
            case,
            system,
            rate,
            ratio,
            p50,
            p99,
            p999,
            lost,
            dropped,
            errors,
            rss,
        ] = cells;
        let _ = writeln!(
            out,
            "{scenario:<8} {case:<44} {system:<7} {rate:>12} {ratio:>10} {p50:>9} {p99:>9} \
             {p999:>9} {lost:>6} {dropped:>8} {errors:>6} {rss:>12}"
        );
    }
    out
}

/// The columns of a row, formatted alike for the terminal table and the Markdown one.
const HEADINGS: [&str; 12] = [
    "scenario",
    "case",
    "system",
    "msgs/s",
    "hubbus/raw",
    "p50 µs",
    "p99 µs",
    "p99.9 µs",
    "lost",
    "dropped",
    "errors",
    "peak RSS MiB",
];

fn cells(r: &Row) -> [String; 12] {
    let latency = |f: fn(&Latency) -> f64| {
        r.latency
            .as_ref()
            .map_or_else(|| "-".into(), |l| format!("{:.0}", f(l)))
    };
    [
        r.scenario.to_owned(),
        r.case.clone(),
        r.system.as_str().to_owned(),
        format!("{:.0}", r.msgs_per_sec),
        r.ratio.map_or_else(|| "-".into(), |x| format!("{x:.2}")),
        latency(|l| l.p50_us),
        latency(|l| l.p99_us),
        latency(|l| l.p999_us),
        r.lost.to_string(),
        r.dropped.to_string(),
        r.errors.to_string(),
        format!("{:.1}", r.peak_rss_kib as f64 / 1024.0),
    ]
}

/// A Markdown table of the same rows (for `docs/performance.md`).
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<String>| {
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    };
    // The raw equivalent's name goes after the system column.
    let with_raw = |cells: [String; 12], raw: &str| {
        let mut cells = Vec::from(cells);
        cells.insert(3, raw.to_owned());
        cells
    };
    line(
        &mut out,
        with_raw(HEADINGS.map(String::from), "raw equivalent"),
    );
    let _ = writeln!(
        out,
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let raw = if r.raw.is_empty() { "-" } else { &r.raw };
        line(&mut out, with_raw(cells(r), raw));
    }
    out
}

pub fn svg(rows: &[Row]) -> String {
    let bars: Vec<(String, f64)> = rows
        .iter()
        .filter_map(|r| r.ratio.map(|x| (format!("{} {}", r.scenario, r.case), x)))
        .collect();
    let label_width = 330.0;
    let plot_width = 420.0;
    let bar_height = 16.0;
    let gap = 4.0;
    let top = 30.0;
    let max = bars
        .iter()
        .map(|(_, x)| *x)
        .fold(1.25_f64, f64::max)
        .min(3.0);
    let height = top + bars.len() as f64 * (bar_height + gap) + 30.0;
    let width = label_width + plot_width + 60.0;
    let x_of = |ratio: f64| label_width + plot_width * (ratio.min(max) / max);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{label_width}" y="18" font-size="13">hubbus msgs/s ÷ raw client msgs/s, same run</text>"#
    );
    for (i, (label, ratio)) in bars.iter().enumerate() {
        let y = top + i as f64 * (bar_height + gap);
        let colour = if *ratio >= 0.95 {
            "#3a7d44"
        } else if *ratio >= 0.8 {
            "#d89c28"
        } else {
            "#b8433a"
        };
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{label_width}" y="{y}" width="{:.1}" height="{bar_height}" fill="{colour}"/><text x="{:.1}" y="{}">{ratio:.2}</text>"#,
            label_width - 6.0,
            y + 12.0,
            escape(label),
            x_of(*ratio) - label_width,
            x_of(*ratio) + 4.0,
            y + 12.0,
        );
    }
    let bottom = top + bars.len() as f64 * (bar_height + gap);
    for tick in [0.5, 1.0, 1.5, 2.0, 2.5, 3.0] {
        if tick > max {
            break;
        }
        let x = x_of(tick);
        let dash = if tick == 1.0 {
            ""
        } else {
            r#" stroke-dasharray="3,3""#
        };
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{bottom}" stroke="#333"{dash}/><text x="{x:.1}" y="{}" text-anchor="middle">{tick:.1}</text>"##,
            top - 4.0,
            bottom + 14.0,
        );
    }
    out.push_str("</svg>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Peak resident memory since the last [`reset_peak_rss`], KiB (0 where Linux's `/proc` is not
/// there).
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Starts a new peak-RSS measurement (Linux: writing 5 to `clear_refs` resets `VmHWM`).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_terminal_table_and_the_markdown_show_the_same_cells() {
        let mut row = Row::new("S1", "subs=1", System::Hubbus).timed(1000, 0.5);
        row.ratio = Some(0.5);
        row.raw = "tokio broadcast".into();
        row.lost = 3;
        let markdown = markdown(std::slice::from_ref(&row));
        assert_eq!(
            markdown.lines().nth(2),
            Some(
                "| S1 | subs=1 | hubbus | tokio broadcast | 2000 | 0.50 | - | - | - | 3 | 0 | 0 | 0.0 |"
            )
        );
        let table = table(&[row]);
        let cells: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "S1", "subs=1", "hubbus", "2000", "0.50", "-", "-", "-", "3", "0", "0", "0.0"
            ]
        );
    }
}
