//! Plain aligned text tables for the CLI: a header row, rows of strings, columns padded to the widest cell.
//!
//! Widths count characters rather than bytes, so names with accents line up. When a maximum width is given
//! (the terminal's, from `COLUMNS`), the widest left-aligned columns are shortened with `…`; numbers and money
//! are never cut, because a truncated amount is worse than a wrapped line.

/// How the cells of one column are aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers and money: padded on the left, so decimal points line up.
    Right,
}

/// A table of text cells with a header row.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    aligns: Vec<Align>,
    rows: Vec<Vec<String>>,
}

/// Two spaces between columns.
const GAP: &str = "  ";
/// A shortened column keeps at least this many characters.
const MIN_SHRUNK_WIDTH: usize = 8;

impl Table {
    /// A table with these `(header, alignment)` columns and no rows yet.
    pub fn new(columns: &[(&str, Align)]) -> Table {
        Table {
            headers: columns.iter().map(|(h, _)| (*h).to_string()).collect(),
            aligns: columns.iter().map(|(_, a)| *a).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells are shown empty and surplus cells are dropped.
    pub fn push(&mut self, mut row: Vec<String>) {
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// Whether no row has been pushed.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as lines of text, each ending in `\n`, fitting in `max_width` characters where
    /// shortening text columns can achieve it.
    pub fn render(&self, max_width: Option<usize>) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        if let Some(max) = max_width {
            self.shrink(&mut widths, max);
        }
        let mut out = String::new();
        self.render_row(&mut out, &self.headers, &widths);
        for row in &self.rows {
            self.render_row(&mut out, row, &widths);
        }
        out
    }

    /// Narrows the widest left-aligned column, one character at a time, until the table fits.
    fn shrink(&self, widths: &mut [usize], max: usize) {
        let gaps = GAP.len() * widths.len().saturating_sub(1);
        loop {
            let total: usize = widths.iter().sum::<usize>() + gaps;
            if total <= max {
                return;
            }
            let widest = widths
                .iter()
                .enumerate()
                .filter(|(i, w)| self.aligns[*i] == Align::Left && **w > MIN_SHRUNK_WIDTH)
                .max_by_key(|(_, w)| **w)
                .map(|(i, _)| i);
            match widest {
                Some(i) => widths[i] -= 1,
                None => return,
            }
        }
    }

    fn render_row(&self, out: &mut String, cells: &[String], widths: &[usize]) {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                line.push_str(GAP);
            }
            let cell = truncate(cell, widths[i]);
            let pad = widths[i].saturating_sub(width(&cell));
            match self.aligns[i] {
                Align::Left => {
                    line.push_str(&cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(&cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// The display width of a cell: characters, not bytes.
fn width(s: &str) -> usize {
    s.chars().count()
}

/// `s` cut to `max` characters, the last one replaced by `…` when anything was cut.
fn truncate(s: &str, max: usize) -> String {
    if width(s) <= max {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// The terminal width from `COLUMNS`, when the shell exports it; callers ask only when printing to a terminal.
pub fn terminal_width() -> Option<usize> {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|w| *w > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(columns: &[(&str, Align)], rows: &[&[&str]], max: Option<usize>, expected: &str) {
        let mut table = Table::new(columns);
        for row in rows {
            table.push(row.iter().map(|c| (*c).to_string()).collect());
        }
        assert_eq!(table.render(max), expected);
    }

    #[test]
    fn pads_text_left_and_money_right() {
        check(
            &[
                ("ID", Align::Left),
                ("NAME", Align::Left),
                ("TOTAL", Align::Right),
            ],
            &[
                &["i1", "Acme", "1200.00 EUR"],
                &["i22", "Bob's Bikes", "9.50 EUR"],
            ],
            None,
            "ID   NAME               TOTAL\n\
             i1   Acme         1200.00 EUR\n\
             i22  Bob's Bikes     9.50 EUR\n",
        );
    }

    #[test]
    fn header_wider_than_cells_sets_the_width() {
        check(
            &[("STATUS", Align::Left), ("N", Align::Right)],
            &[&["new", "1"]],
            None,
            "STATUS  N\nnew     1\n",
        );
    }

    #[test]
    fn counts_characters_not_bytes() {
        check(
            &[("NAME", Align::Left), ("X", Align::Left)],
            &[&["Müller", "a"], &["Li", "b"]],
            None,
            "NAME    X\nMüller  a\nLi      b\n",
        );
    }

    #[test]
    fn short_rows_are_padded_and_long_rows_cut_to_the_headers() {
        check(
            &[("A", Align::Left), ("B", Align::Left)],
            &[&["x"], &["y", "z", "surplus"]],
            None,
            "A  B\nx\ny  z\n",
        );
    }

    #[test]
    fn shrinks_the_widest_text_column_to_fit() {
        check(
            &[
                ("ID", Align::Left),
                ("NAME", Align::Left),
                ("AMOUNT", Align::Right),
            ],
            &[&["1", "A very long company name indeed", "10.00 EUR"]],
            Some(30),
            "ID  NAME                AMOUNT\n\
             1   A very long co…  10.00 EUR\n",
        );
    }

    #[test]
    fn never_cuts_money_even_when_it_cannot_fit() {
        check(
            &[("AMOUNT", Align::Right)],
            &[&["123456789.00 EUR"]],
            Some(5),
            "          AMOUNT\n123456789.00 EUR\n",
        );
    }

    #[test]
    fn empty_table_is_just_the_header() {
        let table = Table::new(&[("ID", Align::Left)]);
        assert!(table.is_empty());
        assert_eq!(table.render(None), "ID\n");
    }
}
