//! The text exposition format (0.0.4).

use std::fmt::Write as _;

use super::{HistogramSnapshot, MetricType};

// ---------------------------------------------------------------------------------------------
// Text format

/// Writes the text exposition format 0.0.4: `# HELP` and `# TYPE` lines, then samples, with
/// label values and help text escaped.
///
/// ```
/// use tollgate::metrics::{MetricType, TextWriter};
///
/// let mut w = TextWriter::new();
/// w.header("tollgate_demo", "A \\ demo.\nSecond line.", MetricType::Gauge);
/// w.sample("tollgate_demo", &[("name", "say \"hi\"\n")], 1.5);
/// let expected = [
///     r#"# HELP tollgate_demo A \\ demo.\nSecond line."#,
///     r#"# TYPE tollgate_demo gauge"#,
///     r#"tollgate_demo{name="say \"hi\"\n"} 1.5"#,
/// ];
/// assert_eq!(w.finish(), expected.join("\n") + "\n");
/// ```
#[derive(Debug, Default)]
pub struct TextWriter {
    out: String,
}

impl TextWriter {
    /// An empty text.
    pub fn new() -> TextWriter {
        TextWriter::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn header(&mut self, name: &str, help: &str, kind: MetricType) {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.as_str());
        self.out.push('\n');
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<f64>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        for (i, (name, value)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(name);
            self.out.push_str("=\"");
            push_escaped(&mut self.out, value);
            self.out.push('"');
        }
        if let Some(le) = le {
            if !labels.is_empty() {
                self.out.push(',');
            }
            self.out.push_str("le=\"");
            push_f64(&mut self.out, le);
            self.out.push('"');
        }
        self.out.push('}');
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        self.labels(labels, None);
        self.out.push(' ');
        push_f64(&mut self.out, value);
        self.out.push('\n');
    }

    /// One sample line with an integer value (exact beyond 2^53).
    pub fn sample_u64(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// The lines of one histogram series: `_bucket` per bound (cumulative, `+Inf` last), `_sum`
    /// and `_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        for (bound, count) in &h.buckets {
            self.out.push_str(name);
            self.out.push_str("_bucket");
            self.labels(labels, Some(*bound));
            let _ = writeln!(self.out, " {count}");
        }
        if h.buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
            self.out.push_str(name);
            self.out.push_str("_bucket");
            self.labels(labels, Some(f64::INFINITY));
            let _ = writeln!(self.out, " {}", h.count);
        }
        self.out.push_str(name);
        self.out.push_str("_sum");
        self.labels(labels, None);
        self.out.push(' ');
        push_f64(&mut self.out, h.sum);
        self.out.push('\n');
        self.out.push_str(name);
        self.out.push_str("_count");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", h.count);
    }

    /// The text so far.
    pub fn as_str(&self) -> &str {
        &self.out
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

fn push_escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn push_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}
