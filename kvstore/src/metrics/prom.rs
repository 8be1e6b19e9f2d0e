//! The Prometheus primitives the member's metrics are made of, and the text they render to.
//!
//! Counters, gauges and histograms are plain atomics, updated where the work happens (one
//! relaxed atomic add per event, no lock, no allocation). [`Text`] writes them in the
//! Prometheus text exposition format 0.0.4, as Go's client library (and so etcd) writes it:
//! `# HELP` and `# TYPE` per family, families sorted by name, cumulative `_bucket{le=…}` lines
//! then `_sum` and `_count` for a histogram, and numbers formatted as Go's
//! `strconv.FormatFloat(v, 'g', -1, 64)` does (`1.048576e+06`, `0.001`), so a scrape of a
//! member reads like a scrape of etcd.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A distribution over fixed buckets: each observation adds one to the first bucket whose
/// upper bound holds it (cumulated only when rendered), to the count, and to the sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum of observations, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    /// Upper bounds `start`, `start * factor`, … (`count` of them), as Go's
    /// `prometheus.ExponentialBuckets` makes them.
    pub fn exponential(start: f64, factor: f64, count: usize) -> Histogram {
        let mut bounds = Vec::with_capacity(count);
        let mut b = start;
        for _ in 0..count {
            bounds.push(b);
            b *= factor;
        }
        Histogram::with_bounds(bounds)
    }

    /// Upper bounds `start`, `start + width`, … (`count` of them), as Go's
    /// `prometheus.LinearBuckets` makes them.
    pub fn linear(start: f64, width: f64, count: usize) -> Histogram {
        Histogram::with_bounds((0..count).map(|i| start + width * i as f64).collect())
    }

    pub fn with_bounds(bounds: Vec<f64>) -> Histogram {
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram {
            bounds,
            buckets,
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observes the seconds elapsed since `start`.
    pub fn observe_since(&self, start: Instant) {
        self.observe(start.elapsed().as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }
}

/// Formats `v` as Go's `strconv.FormatFloat(v, 'g', -1, 64)`: the shortest decimal that reads
/// back as `v`, in exponent form when the exponent is below -4 or at least 6
/// (`3.51527e+06`, `1e-05`), `+Inf`, `-Inf` and `NaN` as Go spells them.
pub fn go_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if v == 0.0 {
        return "0".into();
    }
    // Rust's `{:e}` is the shortest round-tripping mantissa with its exponent.
    let sci = format!("{v:e}");
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return sci;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..6).contains(&exp) {
        return format!("{v}");
    }
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.abs())
}

/// One family's rendered lines, kept to be sorted by name.
struct Family {
    name: String,
    text: String,
}

/// A scrape being written: families are added in any order and come out sorted by name.
#[derive(Default)]
pub struct Text {
    families: Vec<Family>,
}

/// Label pairs of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Text {
    /// Starts a family: its `# HELP` and `# TYPE` lines. Samples follow with [`Text::sample`]
    /// or [`Text::histogram`].
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let mut text = String::new();
        let _ = writeln!(text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(text, "# TYPE {name} {kind}");
        self.families.push(Family {
            name: name.to_string(),
            text,
        });
        self
    }

    /// A sample of the family started last (`name` may carry a suffix such as `_sum`).
    pub fn sample(&mut self, name: &str, labels: Labels<'_>, v: f64) -> &mut Self {
        if let Some(f) = self.families.last_mut() {
            f.text.push_str(name);
            write_labels(&mut f.text, labels, None);
            let _ = writeln!(f.text, " {}", go_float(v));
        }
        self
    }

    /// A one-sample gauge family.
    pub fn gauge(&mut self, name: &str, help: &str, v: f64) -> &mut Self {
        self.family(name, "gauge", help).sample(name, &[], v)
    }

    /// A one-sample counter family.
    pub fn counter(&mut self, name: &str, help: &str, v: f64) -> &mut Self {
        self.family(name, "counter", help).sample(name, &[], v)
    }

    /// The `_bucket`, `_sum` and `_count` samples of `h` with `labels`, in the family started
    /// last (named `name`).
    pub fn histogram(&mut self, name: &str, labels: Labels<'_>, h: &Histogram) -> &mut Self {
        let Some(f) = self.families.last_mut() else {
            return self;
        };
        let mut cumulative = 0u64;
        for (i, b) in h.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = h.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            let _ = write!(f.text, "{name}_bucket");
            write_labels(&mut f.text, labels, Some(&go_float(le)));
            let _ = writeln!(f.text, " {cumulative}");
        }
        let sum = f64::from_bits(h.sum.load(Ordering::Relaxed));
        let _ = write!(f.text, "{name}_sum");
        write_labels(&mut f.text, labels, None);
        let _ = writeln!(f.text, " {}", go_float(sum));
        let _ = write!(f.text, "{name}_count");
        write_labels(&mut f.text, labels, None);
        // The buckets' total, not `count`: a scrape racing an observation stays consistent.
        let _ = writeln!(f.text, " {cumulative}");
        self
    }

    /// A histogram family with one unlabelled histogram.
    pub fn histogram_family(&mut self, name: &str, help: &str, h: &Histogram) -> &mut Self {
        self.family(name, "histogram", help).histogram(name, &[], h)
    }

    /// The scrape: families sorted by name.
    pub fn finish(mut self) -> String {
        self.families.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = String::with_capacity(self.families.iter().map(|f| f.text.len()).sum());
        for f in self.families {
            out.push_str(&f.text);
        }
        out
    }
}

fn write_labels(out: &mut String, labels: Labels<'_>, le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
    }
    out.push('}');
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_as_go_writes_them() {
        for (v, go) in [
            (0.0, "0"),
            (1.0, "1"),
            (96687.0, "96687"),
            (3515270.0, "3.51527e+06"),
            (1048576.0, "1.048576e+06"),
            (0.001, "0.001"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (0.077619773, "0.077619773"),
            (8.192, "8.192"),
            (2147483648.0, "2.147483648e+09"),
            (-1.0, "-1"),
            (f64::INFINITY, "+Inf"),
        ] {
            assert_eq!(go_float(v), go, "{v}");
        }
    }

    #[test]
    fn histogram_renders_cumulative_buckets_sum_and_count() {
        let h = Histogram::exponential(0.001, 2.0, 3);
        assert_eq!(h.bounds(), &[0.001, 0.002, 0.004]);
        h.observe(0.0005);
        h.observe(0.003);
        h.observe(5.0);
        let mut t = Text::default();
        t.family("x_seconds", "histogram", "X.")
            .histogram("x_seconds", &[("To", "a")], &h);
        let out = t.finish();
        let want = "# HELP x_seconds X.\n# TYPE x_seconds histogram\n\
            x_seconds_bucket{To=\"a\",le=\"0.001\"} 1\n\
            x_seconds_bucket{To=\"a\",le=\"0.002\"} 1\n\
            x_seconds_bucket{To=\"a\",le=\"0.004\"} 2\n\
            x_seconds_bucket{To=\"a\",le=\"+Inf\"} 3\n\
            x_seconds_sum{To=\"a\"} 5.0035\n\
            x_seconds_count{To=\"a\"} 3\n";
        assert_eq!(out, want);
    }

    #[test]
    fn families_come_out_sorted_and_labels_escaped() {
        let mut t = Text::default();
        t.gauge("b", "B.", 2.0);
        t.family("a_total", "counter", "A\\n.")
            .sample("a_total", &[("k", "q\"\\\n")], 1.0);
        assert_eq!(
            t.finish(),
            "# HELP a_total A\\\\n.\n# TYPE a_total counter\na_total{k=\"q\\\"\\\\\\n\"} 1\n\
             # HELP b B.\n# TYPE b gauge\nb 2\n"
        );
    }
}
