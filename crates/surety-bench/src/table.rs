//! A small table that renders both as aligned text (for the terminal) and as Markdown
//! (for BENCHMARKS.md), so every benchmark prints the same figures in both places.

/// Which side of its column a cell hugs: numbers right, names left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    aligns: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&str, Align)]) -> Self {
        Self {
            headers: columns.iter().map(|(h, _)| (*h).to_string()).collect(),
            aligns: columns.iter().map(|(_, a)| *a).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are left empty, extra cells are an error in the caller.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert!(cells.len() <= self.headers.len(), "more cells than columns");
        self.rows.push(cells);
    }

    fn cell<'a>(&self, row: &'a [String], col: usize) -> &'a str {
        row.get(col).map_or("", String::as_str)
    }

    /// Columns padded with spaces, a dashed rule under the headers.
    pub fn to_text(&self) -> String {
        // Count chars, not bytes: cells hold "µs".
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| self.cell(r, c).chars().count())
                    .chain([self.headers[c].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let parts: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(c, &w)| {
                    let cell = self.cell(cells, c);
                    match self.aligns[c] {
                        Align::Left => format!("{cell:<w$}"),
                        Align::Right => format!("{cell:>w$}"),
                    }
                })
                .collect();
            parts.join("  ").trim_end().to_string()
        };
        let mut out = line(&self.headers);
        out.push('\n');
        let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
        out.push_str(&rule.join("  "));
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }

    /// A GitHub-flavoured Markdown table.
    pub fn to_markdown(&self) -> String {
        let line = |cells: Vec<&str>| format!("| {} |\n", cells.join(" | "));
        let mut out = line(self.headers.iter().map(String::as_str).collect());
        out.push_str(&line(
            self.aligns
                .iter()
                .map(|a| match a {
                    Align::Left => ":--",
                    Align::Right => "--:",
                })
                .collect(),
        ));
        for r in &self.rows {
            out.push_str(&line(
                (0..self.headers.len())
                    .map(|c| self.cell(r, c).trim())
                    .collect(),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_and_markdown() {
        let mut t = Table::new(&[("name", Align::Left), ("n", Align::Right)]);
        t.row(vec!["a".into(), "10".into()]);
        t.row(vec!["long".into(), "2".into()]);
        assert_eq!(t.to_text(), "name   n\n----  --\na     10\nlong   2\n");
        assert_eq!(
            t.to_markdown(),
            "| name | n |\n| :-- | --: |\n| a | 10 |\n| long | 2 |\n"
        );
    }
}
