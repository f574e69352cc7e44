//! Small text helpers: money, plain-text tables.

/// A price per 1M tokens: at least two decimals, more when they matter (`2.50`, `0.075`).
pub(crate) fn rate(x: f64) -> String {
    let two = format!("{x:.2}");
    if (two.parse::<f64>().unwrap_or(f64::NAN) - x).abs() < 1e-12 {
        two
    } else {
        let s = format!("{x:.6}");
        s.trim_end_matches('0').to_owned()
    }
}

/// An amount of money with six decimals (`0.001030`), as small calls cost fractions of a cent.
pub(crate) fn money(x: f64) -> String {
    format!("{x:.6}")
}

/// A plain-text table with a header row; numbers are right-aligned, text left-aligned.
#[derive(Debug, Default)]
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
}

impl Table {
    /// A table with these column names; `right[i]` right-aligns column `i`.
    pub(crate) fn new(header: &[&str], right: &[bool]) -> Table {
        Table {
            header: header.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
            right: right.to_vec(),
        }
    }

    /// Adds a row.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders the table, each line indented by `indent` spaces.
    pub(crate) fn render(&self, indent: usize) -> String {
        let n = self.header.len();
        let mut width = vec![0usize; n];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(n) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            out.push_str(&" ".repeat(indent));
            let mut parts = Vec::with_capacity(n);
            for (i, w) in width.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = w.saturating_sub(c.chars().count());
                if self.right.get(i).copied().unwrap_or(false) {
                    parts.push(format!("{}{c}", " ".repeat(pad)));
                } else {
                    parts.push(format!("{c}{}", " ".repeat(pad)));
                }
            }
            out.push_str(parts.join("  ").trim_end());
            out.push('\n');
        };
        line(&mut out, &self.header);
        for r in &self.rows {
            line(&mut out, r);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(rate(2.5), "2.50");
        assert_eq!(rate(0.075), "0.075");
        assert_eq!(rate(10.0), "10.00");
        assert_eq!(rate(0.27), "0.27");
    }

    #[test]
    fn table_aligns() {
        let mut t = Table::new(&["name", "n"], &[false, true]);
        t.row(vec!["a".into(), "10".into()]);
        t.row(vec!["bbb".into(), "2".into()]);
        assert_eq!(t.render(0), "name   n\na     10\nbbb    2\n");
    }
}
