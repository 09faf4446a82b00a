//! Results as people read them (aligned tables) or as scripts read them (`--format json|yaml`,
//! the same data whatever the table shows).

use std::io::{IsTerminal, Write};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

pub struct Table {
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table { headers: headers.to_vec(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
        }
        let line = |cells: Vec<&str>| {
            let mut out = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    out.push_str(c);
                } else {
                    out.push_str(&format!("{c:<w$}  ", w = widths[i]));
                }
            }
            out.trim_end().to_string()
        };
        let mut out = line(self.headers.clone()) + "\n";
        for r in &self.rows {
            out += &line(r.iter().map(String::as_str).collect());
            out.push('\n');
        }
        out
    }
}

/// Prints `value` in `format`; for tables, `table` builds the table from it.
pub fn emit<T: Serialize>(format: Format, value: &T, table: impl FnOnce(&T) -> Table) {
    let text = match format {
        Format::Json => serde_json::to_string_pretty(value).unwrap_or_default() + "\n",
        Format::Yaml => serde_yaml::to_string(value).unwrap_or_default(),
        Format::Table => table(value).render(),
    };
    // A closed pipe (`fjordctl ... | head`) ends the output, not the process with a panic.
    let _ = std::io::stdout().write_all(text.as_bytes());
}

/// A key/value table for one object.
pub fn pairs(rows: &[(&str, String)]) -> Table {
    let mut t = Table::new(&["FIELD", "VALUE"]);
    for (k, v) in rows {
        t.row(vec![k.to_string(), v.clone()]);
    }
    t
}

/// Progress for long operations, on stderr and only when it is a terminal (scripts reading
/// stdout see results only).
pub struct Progress {
    on: bool,
}

impl Progress {
    pub fn new() -> Progress {
        Progress { on: std::io::stderr().is_terminal() }
    }

    pub fn update(&self, message: &str) {
        if self.on {
            let _ = write!(std::io::stderr(), "\r\x1b[2K{message}");
        }
    }

    pub fn done(&self, message: &str) {
        if self.on {
            let _ = writeln!(std::io::stderr(), "\r\x1b[2K{message}");
        }
    }

    /// Erases the progress line (what follows says how it went).
    pub fn clear(&self) {
        if self.on {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

pub fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_string(), T::to_string)
}

pub fn list<T: ToString>(v: &[T]) -> String {
    v.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up() {
        let mut t = super::Table::new(&["NAME", "PARTITIONS"]);
        t.row(vec!["orders".into(), "3".into()]);
        t.row(vec!["a".into(), "12".into()]);
        assert_eq!(t.render(), "NAME    PARTITIONS\norders  3\na       12\n");
    }
}
