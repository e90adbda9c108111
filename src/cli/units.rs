//! Human units and plain tables: "1.2 MiB", "3.4 s", "1,234", aligned columns.

use serde_json::Value;

use super::out::outln;

/// Bytes in binary units: "512 B", "1.2 MiB".
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A duration given in milliseconds: "45 ms", "3.4 s", "2 min 5 s", "1 h 3 min".
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// A count with thousands separated: "1,234,567".
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A JSON value as a word: strings without quotes, `null` as "-".
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A number field in human units, or "-" when absent.
pub fn opt(v: &Value, f: fn(u64) -> String) -> String {
    v.as_u64().map_or_else(|| "-".into(), f)
}

/// An RFC 3339 time as "2026-12-05 23:52:34 UTC" (given text otherwise).
pub fn time(v: &Value) -> String {
    match v.as_str().map(chrono::DateTime::parse_from_rfc3339) {
        Some(Ok(t)) => t
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string(),
        _ => text(v),
    }
}

/// Milliseconds since the epoch as [`time`] does, or "-".
pub fn time_ms(v: &Value) -> String {
    v.as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || "-".into(),
            |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
}

/// A list of words, "-" when empty.
pub fn list(v: &Value) -> String {
    let words: Vec<String> = v.as_array().into_iter().flatten().map(text).collect();
    if words.is_empty() {
        "-".into()
    } else {
        words.join(", ")
    }
}

/// Columns under upper-case headers; a header starting with `>` is
/// right-aligned (numbers).
pub struct Table {
    headers: Vec<(String, bool)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers
                .iter()
                .map(|h| match h.strip_prefix('>') {
                    Some(h) => (h.to_string(), true),
                    None => (h.to_string(), false),
                })
                .collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table's lines (headers first), columns two spaces apart.
    pub fn lines(&self) -> Vec<String> {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self
            .headers
            .iter()
            .map(|(h, _)| h.chars().count())
            .collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let header: Vec<String> = self.headers.iter().map(|(h, _)| h.clone()).collect();
        std::iter::once(&header)
            .chain(&self.rows)
            .map(|cells| {
                let mut line = String::new();
                for (i, (w, (_, right))) in widths.iter().zip(&self.headers).enumerate() {
                    let cell = cells.get(i).map_or("", String::as_str);
                    let pad = w.saturating_sub(cell.chars().count());
                    if i > 0 {
                        line.push_str("  ");
                    }
                    if *right {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(cell);
                    } else {
                        line.push_str(cell);
                        if i + 1 < n {
                            line.push_str(&" ".repeat(pad));
                        }
                    }
                }
                line
            })
            .collect()
    }

    pub fn print(&self) {
        for line in self.lines() {
            outln!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn units_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(1_258_291), "1.2 MiB");
        assert_eq!(duration(45), "45 ms");
        assert_eq!(duration(3_400), "3.4 s");
        assert_eq!(duration(125_000), "2 min 5 s");
        assert_eq!(duration(3_780_000), "1 h 3 min");
        assert_eq!(count(7), "7");
        assert_eq!(count(1_234), "1,234");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(
            time(&json!("2026-12-05T23:52:34.442Z")),
            "2026-12-05 23:52:34 UTC"
        );
        assert_eq!(time_ms(&json!(0)), "1970-01-01 00:00:00 UTC");
        assert_eq!(time_ms(&Value::Null), "-");
        assert_eq!(list(&json!(["a", "b"])), "a, b");
        assert_eq!(list(&json!([])), "-");
    }

    #[test]
    fn tables_align_words_left_and_numbers_right() {
        let mut t = Table::new(&["ID", ">RECORDS", "NAME"]);
        t.row(vec!["a".into(), "5".into(), "docs".into()]);
        t.row(vec!["bbbb".into(), "1,200".into(), "x".into()]);
        assert_eq!(
            t.lines(),
            vec![
                "ID    RECORDS  NAME",
                "a           5  docs",
                "bbbb    1,200  x",
            ]
        );
    }
}
