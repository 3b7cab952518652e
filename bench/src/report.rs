//! Measurements and how they are shown: tables, JSON lines, SVG charts.
//!
//! A [`Measurement`] is one figure of Foundation's with the same figure for
//! each peer taken in the same run. Ratios are always `foundation / peer`;
//! whether a ratio above one is good depends on [`Better`], so every table
//! row spells the verdict out ("2.1x better", "1.3x worse").
//!
//! Charts are hand-written SVG, one file per case with one group of
//! horizontal bars per metric, so the harness needs no plotting crate.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The name Foundation's figures go under in tables and charts.
pub(crate) const FOUNDATION: &str = "foundation";

/// Which direction of a metric is the good one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Better {
    /// Larger is better (throughput).
    Higher,
    /// Smaller is better (latency, cost, memory).
    Lower,
}

/// One figure of Foundation's and the same figure for each peer.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Measurement {
    /// Case the figure belongs to (`spawn`, `local`).
    pub(crate) case: String,
    /// Stable metric identifier within the case.
    pub(crate) metric: String,
    /// Unit of `value` and of every peer's value.
    pub(crate) unit: String,
    /// Foundation's value; NaN (`null` in JSON) when it could not be measured.
    pub(crate) value: f64,
    /// Direction in which the metric improves.
    pub(crate) better: Better,
    /// Each peer's value, by peer name.
    pub(crate) peers: BTreeMap<String, f64>,
    /// What the reader needs to know to compare fairly, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) note: Option<String>,
    /// Share of the machine's CPU time its host took while the case ran,
    /// in percent ([`crate::steal`]); absent where the kernel does not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stolen: Option<f64>,
}

impl Measurement {
    /// A measurement of `metric` without figures yet.
    pub(crate) fn new(case: &str, metric: &str, unit: &str, better: Better) -> Self {
        Self {
            case: case.to_owned(),
            metric: metric.to_owned(),
            unit: unit.to_owned(),
            value: f64::NAN,
            better,
            peers: BTreeMap::new(),
            note: None,
            stolen: None,
        }
    }

    /// Adds a peer's figure; a missing (`None`) or NaN figure is left out.
    pub(crate) fn peer(&mut self, name: &str, value: Option<f64>) -> &mut Self {
        if let Some(value) = value.filter(|v| !v.is_nan()) {
            self.peers.insert(name.to_owned(), value);
        }
        self
    }

    /// Appends a sentence to the note.
    pub(crate) fn note(&mut self, text: &str) -> &mut Self {
        match &mut self.note {
            Some(note) => {
                note.push(' ');
                note.push_str(text);
            }
            None => self.note = Some(text.to_owned()),
        }
        self
    }

    /// `foundation / peer` for the named peer, if both figures exist.
    pub(crate) fn ratio(&self, peer: &str) -> Option<f64> {
        let peer = *self.peers.get(peer)?;
        let ratio = self.value / peer;
        ratio.is_finite().then_some(ratio)
    }
}

/// Writes each case's measurements as it finishes.
#[derive(Debug)]
pub(crate) struct Report {
    json: bool,
    plots: bool,
    charts: Vec<PathBuf>,
}

impl Report {
    /// A report printing JSON lines (`json`) or tables, and writing charts
    /// when `plots` is set.
    pub(crate) fn new(json: bool, plots: bool) -> Self {
        Self {
            json,
            plots,
            charts: Vec::new(),
        }
    }

    /// Prints one finished case and writes its chart.
    pub(crate) fn case(&mut self, case: &str, measurements: &[Measurement]) -> io::Result<()> {
        let mut stdout = io::stdout().lock();
        if self.json {
            for measurement in measurements {
                serde_json::to_writer(&mut stdout, measurement)?;
                writeln!(stdout)?;
            }
        } else {
            stdout.write_all(table(case, measurements).as_bytes())?;
        }
        stdout.flush()?;
        if self.plots && !measurements.is_empty() {
            let dir = report_dir();
            std::fs::create_dir_all(&dir)?;
            let path = dir.join(format!("{case}.svg"));
            std::fs::write(&path, svg(case, measurements))?;
            self.charts.push(path);
        }
        Ok(())
    }

    /// Says where the charts went (on stderr, so JSON output stays clean).
    pub(crate) fn finish(self) {
        for chart in &self.charts {
            eprintln!("chart: {}", chart.display());
        }
    }
}

/// Where charts go: `<target dir>/bench-report/`.
///
/// The target directory is `CARGO_TARGET_DIR` when set; otherwise the nearest
/// ancestor of this executable that cargo marked with `CACHEDIR.TAG` (the
/// binary normally lives in `<target>/release/`); otherwise `./target`.
pub(crate) fn report_dir() -> PathBuf {
    target_dir().join("bench-report")
}

/// The cargo target directory this binary belongs to (see [`report_dir`]).
pub(crate) fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Ok(exe) = std::env::current_exe() {
        let marked = exe
            .ancestors()
            .skip(1)
            .find(|dir| dir.join("CACHEDIR.TAG").is_file());
        if let Some(dir) = marked {
            return dir.to_path_buf();
        }
        // `<target>/<profile>/foundation-bench` without the tag file.
        if let Some(dir) = exe.parent().and_then(Path::parent) {
            return dir.to_path_buf();
        }
    }
    PathBuf::from("target")
}

/// The human table of one case.
///
/// ```text
/// == local ==   (ratio = foundation / peer)
/// metric                 unit    better  foundation  peer                    value  ratio  foundation is
/// one_to_one_same_shard  msgs/s  higher     20.00 M  erlang                10.47 M   1.91  1.91x better
///                                                    tokio-current-thread  13.87 M   1.44  1.44x better
/// ```
fn table(case: &str, measurements: &[Measurement]) -> String {
    let rows: Vec<[String; 8]> = measurements.iter().flat_map(rows_of).collect();
    let header = [
        "metric",
        "unit",
        "better",
        FOUNDATION,
        "peer",
        "value",
        "ratio",
        "foundation is",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = format!("\n== {case} ==   (ratio = foundation / peer)\n");
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            // Numbers right-aligned, words left-aligned.
            if matches!(i, 3 | 5 | 6) {
                let _ = write!(text, "{cell:>width$}  ");
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header.map(str::to_owned));
    for row in &rows {
        line(row);
    }
    let notes: Vec<String> = measurements
        .iter()
        .filter_map(|m| {
            m.note
                .as_ref()
                .map(|note| format!("  {}: {note}", m.metric))
        })
        .collect();
    if !notes.is_empty() {
        out.push_str("notes:\n");
        for note in notes {
            out.push_str(&note);
            out.push('\n');
        }
    }
    let stolen = measurements
        .iter()
        .filter_map(|m| m.stolen)
        .fold(0.0, f64::max);
    if stolen >= STOLEN_WORTH_SAYING {
        let _ = writeln!(
            out,
            "machine: its host took {stolen:.1} % of the CPU time while this case ran (steal); \
             the figures are slower and noisier than on a quiet machine."
        );
    }
    out
}

/// Steal, in percent of the CPU time, from which a case's table warns of
/// it: below, it is within the run-to-run spread.
const STOLEN_WORTH_SAYING: f64 = 1.0;

/// Table rows of one measurement: one per peer, the metric on the first.
fn rows_of(m: &Measurement) -> Vec<[String; 8]> {
    let lead = [
        m.metric.clone(),
        m.unit.clone(),
        better_word(m.better).to_owned(),
        number(m.value),
    ];
    if m.peers.is_empty() {
        let [a, b, c, d] = lead;
        return vec![[
            a,
            b,
            c,
            d,
            "(no peer)".to_owned(),
            String::new(),
            String::new(),
            String::new(),
        ]];
    }
    m.peers
        .iter()
        .enumerate()
        .map(|(i, (peer, &value))| {
            let [a, b, c, d] = if i == 0 {
                lead.clone()
            } else {
                Default::default()
            };
            let (ratio, verdict) = match m.ratio(peer) {
                Some(ratio) => (format!("{ratio:.2}"), verdict(ratio, m.better)),
                None => ("-".to_owned(), "-".to_owned()),
            };
            [a, b, c, d, peer.clone(), number(value), ratio, verdict]
        })
        .collect()
}

fn better_word(better: Better) -> &'static str {
    match better {
        Better::Higher => "higher",
        Better::Lower => "lower",
    }
}

/// "1.80x better" / "1.25x worse" / "even" for a `foundation / peer` ratio.
fn verdict(ratio: f64, better: Better) -> String {
    let advantage = match better {
        Better::Higher => ratio,
        Better::Lower => 1.0 / ratio,
    };
    if (advantage - 1.0).abs() < 0.005 {
        "even".to_owned()
    } else if advantage > 1.0 {
        format!("{advantage:.2}x better")
    } else {
        format!("{:.2}x worse", 1.0 / advantage)
    }
}

/// A figure with an SI suffix and three or four significant digits.
fn number(value: f64) -> String {
    if value.is_nan() {
        return "n/a".to_owned();
    }
    let magnitude = value.abs();
    let (scaled, suffix) = if magnitude >= 1e9 {
        (value / 1e9, " G")
    } else if magnitude >= 1e6 {
        (value / 1e6, " M")
    } else if magnitude >= 1e4 {
        (value / 1e3, " k")
    } else {
        (value, "")
    };
    let decimals = if scaled.abs() >= 100.0 {
        1
    } else if scaled.abs() >= 10.0 {
        2
    } else {
        3
    };
    format!("{scaled:.decimals$}{suffix}")
}

// Chart geometry, in SVG user units.
const CHART_WIDTH: f64 = 960.0;
const LABEL_WIDTH: f64 = 200.0;
const VALUE_WIDTH: f64 = 260.0;
const BAR_HEIGHT: f64 = 18.0;
const BAR_GAP: f64 = 6.0;
const TITLE_HEIGHT: f64 = 30.0;
const GROUP_GAP: f64 = 18.0;
/// Characters of a note line at the note's font size.
const NOTE_CHARS: usize = 150;

/// One SVG per case: a horizontal bar group per metric, Foundation first.
fn svg(case: &str, measurements: &[Measurement]) -> String {
    let bar_room = CHART_WIDTH - LABEL_WIDTH - VALUE_WIDTH - 20.0;
    let mut body = String::new();
    let mut y = 40.0;
    for m in measurements {
        let bars: Vec<(&str, f64)> = std::iter::once((FOUNDATION, m.value))
            .chain(m.peers.iter().map(|(name, &v)| (name.as_str(), v)))
            .collect();
        let max = bars
            .iter()
            .map(|&(_, v)| v)
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let _ = writeln!(
            body,
            r#"<text x="10" y="{:.1}" class="metric">{} <tspan class="unit">({}, {} is better)</tspan></text>"#,
            y + 18.0,
            escape(&m.metric),
            escape(&m.unit),
            better_word(m.better),
        );
        y += TITLE_HEIGHT;
        for (name, value) in bars {
            let length = if max > 0.0 && value.is_finite() {
                (value / max * bar_room).max(1.0)
            } else {
                0.0
            };
            let class = if name == FOUNDATION { "ours" } else { "peer" };
            let label = match m.ratio(name) {
                Some(ratio) if name != FOUNDATION => {
                    format!(
                        "{}  (foundation {})",
                        number(value),
                        verdict(ratio, m.better)
                    )
                }
                _ => number(value),
            };
            let _ = writeln!(
                body,
                r#"<text x="{lx:.1}" y="{ty:.1}" class="name">{name}</text><rect x="{bx:.1}" y="{y:.1}" width="{length:.1}" height="{BAR_HEIGHT}" class="{class}"/><text x="{vx:.1}" y="{ty:.1}" class="value">{label}</text>"#,
                lx = LABEL_WIDTH - 8.0,
                ty = y + BAR_HEIGHT - 4.0,
                name = escape(name),
                bx = LABEL_WIDTH,
                vx = LABEL_WIDTH + length + 6.0,
                label = escape(&label),
            );
            y += BAR_HEIGHT + BAR_GAP;
        }
        for line in wrap(m.note.as_deref().unwrap_or(""), NOTE_CHARS) {
            let _ = writeln!(
                body,
                r#"<text x="10" y="{:.1}" class="note">{}</text>"#,
                y + 10.0,
                escape(&line)
            );
            y += 13.0;
        }
        y += GROUP_GAP;
    }
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" height="{height:.0}" viewBox="0 0 {CHART_WIDTH} {height:.0}" font-family="sans-serif" font-size="12">
<style>
.title {{ font-size: 16px; font-weight: bold; }}
.metric {{ font-size: 13px; font-weight: bold; }}
.unit {{ font-weight: normal; fill: #555; }}
.name {{ text-anchor: end; }}
.value {{ fill: #333; }}
.note {{ font-size: 10px; fill: #777; }}
.ours {{ fill: #d9534f; }}
.peer {{ fill: #5b8def; }}
</style>
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="24" class="title">foundation-bench: {case}</text>
{body}</svg>
"##,
        height = y + 10.0,
        case = escape(case),
    )
}

/// `text` in lines of at most about `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Measurement {
        let mut m = Measurement::new("local", "ping_pong_same_shard_p50", "ns", Better::Lower);
        m.value = 500.0;
        m.peer("tokio-current-thread", Some(1000.0))
            .peer("erlang", None)
            .note("a & b");
        m
    }

    #[test]
    fn verdict_follows_direction() {
        assert_eq!(verdict(0.5, Better::Lower), "2.00x better");
        assert_eq!(verdict(0.5, Better::Higher), "2.00x worse");
        assert_eq!(verdict(1.0, Better::Higher), "even");
    }

    #[test]
    fn missing_peers_are_left_out() {
        let m = sample();
        assert_eq!(m.peers.keys().collect::<Vec<_>>(), ["tokio-current-thread"]);
        assert_eq!(m.ratio("tokio-current-thread"), Some(0.5));
    }

    #[test]
    fn json_line_has_the_documented_keys() {
        let json: serde_json::Value = serde_json::to_value(sample()).unwrap();
        for key in ["case", "metric", "unit", "value", "peers"] {
            assert!(json.get(key).is_some(), "{key} missing");
        }
        assert_eq!(json["peers"]["tokio-current-thread"], 1000.0);
        assert_eq!(json["better"], "lower");
    }

    #[test]
    fn svg_and_table_render() {
        let m = sample();
        let svg = svg("local", std::slice::from_ref(&m));
        assert!(svg.starts_with("<svg") && svg.contains("a &amp; b"));
        let table = table("local", &[m]);
        assert!(table.contains("2.00x better"), "{table}");
    }

    #[test]
    fn a_table_warns_of_steal_worth_saying() {
        let mut m = sample();
        m.stolen = Some(0.4);
        assert!(!table("local", std::slice::from_ref(&m)).contains("steal"));
        m.stolen = Some(4.2);
        let table = table("local", &[m]);
        assert!(table.contains("took 4.2 % of the CPU time"), "{table}");
    }

    #[test]
    fn notes_wrap_at_spaces() {
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        assert!(wrap("", 5).is_empty());
    }

    #[test]
    fn numbers_get_suffixes() {
        assert_eq!(number(25_100_000.0), "25.10 M");
        assert_eq!(number(812.0), "812.0");
        assert_eq!(number(f64::NAN), "n/a");
    }
}
