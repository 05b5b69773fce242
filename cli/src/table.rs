//! Tables sized to the terminal: columns as wide as their widest cell, and when the row does
//! not fit, the widest columns cut (with `…`) until it does. Piped output is never cut.

use console::{Term, measure_text_width, pad_str, truncate_str};

/// A column is not cut narrower than this.
const NARROWEST: usize = 6;
const GAP: &str = "  ";

pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as lines fitting `width` columns (none: as wide as it comes).
    pub fn render(&self, width: Option<usize>) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(measure_text_width(cell));
            }
        }
        if let Some(limit) = width {
            let gaps = GAP.len() * widths.len().saturating_sub(1);
            while widths.iter().sum::<usize>() + gaps > limit {
                let (widest, &w) = widths
                    .iter()
                    .enumerate()
                    .max_by_key(|&(_, w)| *w)
                    .expect("a table has columns");
                if w <= NARROWEST {
                    break;
                }
                widths[widest] -= 1;
            }
        }
        let header: Vec<String> = self
            .headers
            .iter()
            .map(|h| console::style(h).bold().to_string())
            .collect();
        let mut out = String::new();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let line: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(cell, &w)| {
                    pad_str(
                        &truncate_str(cell, w, "…"),
                        w,
                        console::Alignment::Left,
                        None,
                    )
                    .into_owned()
                })
                .collect();
            out.push_str(line.join(GAP).trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table to standard output, fitted to the terminal when it is one.
    pub fn print(&self) {
        print!("{}", self.render(terminal_width()));
    }
}

/// The terminal's width, when standard output is a terminal.
pub fn terminal_width() -> Option<usize> {
    Term::stdout()
        .size_checked()
        .map(|(_, cols)| usize::from(cols))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_too_wide_is_cut_at_its_widest_column() {
        let mut table = Table::new(&["ID", "ERROR"]);
        table.row(vec!["abc".into(), "x".repeat(100)]);
        let lines: Vec<String> = table
            .render(Some(40))
            .lines()
            .map(console::strip_ansi_codes)
            .map(|line| line.into_owned())
            .collect();
        assert!(
            lines.iter().all(|line| measure_text_width(line) <= 40),
            "{lines:?}"
        );
        assert!(lines[1].ends_with('…'), "{lines:?}");
    }

    #[test]
    fn without_a_width_nothing_is_cut() {
        let mut table = Table::new(&["ID", "ERROR"]);
        table.row(vec!["abc".into(), "x".repeat(100)]);
        assert!(table.render(None).contains(&"x".repeat(100)));
    }
}
