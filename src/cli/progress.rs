//! Progress of a running command, from the events the daemon (or the offline
//! run) sends: bars with records, bytes, rate and ETA when stderr is a
//! terminal; one plain line per event otherwise; `{"event": …}` lines on
//! stdout with `--json`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use super::out::{errln, outln};
use super::units::{bytes, count, duration, text};

/// Shows progress events as they arrive.
pub struct Reporter {
    json: bool,
    tty: bool,
    current: Option<Counter>,
}

/// The counter (records or chunks) of one step, e.g. "backup docs".
struct Counter {
    label: String,
    started: Instant,
    bar: Option<ProgressBar>,
}

/// What one event says, for people.
enum Shown {
    /// `done` of `total` `unit` in the step `label`, and bytes written so far.
    Count {
        label: String,
        done: u64,
        total: u64,
        unit: &'static str,
        written: Option<u64>,
    },
    Line(String),
}

impl Reporter {
    pub fn new(json: bool) -> Reporter {
        Reporter {
            json,
            tty: std::io::stderr().is_terminal(),
            current: None,
        }
    }

    pub fn event(&mut self, event: &Value) {
        if self.json {
            outln!("{}", serde_json::json!({ "event": event }));
            return;
        }
        match describe(event) {
            Shown::Line(line) => self.note(&line),
            Shown::Count {
                label,
                done,
                total,
                unit,
                written,
            } => {
                if self.current.as_ref().is_none_or(|c| c.label != label) {
                    self.finish();
                    self.current = Some(Counter {
                        bar: self.tty.then(|| new_bar(&label, total, unit)),
                        label: label.clone(),
                        started: Instant::now(),
                    });
                }
                let Some(counter) = &self.current else { return };
                let elapsed = counter.started.elapsed();
                let bytes_part = written
                    .filter(|b| *b > 0)
                    .map(|b| format!(", {} written{}", bytes(b), per_sec_bytes(b, elapsed)))
                    .unwrap_or_default();
                let rate = rate_and_eta(done, total, unit, elapsed);
                match &counter.bar {
                    Some(bar) => {
                        bar.set_length(total);
                        bar.set_position(done);
                        bar.set_message(format!("{bytes_part}{rate}"));
                    }
                    None => errln!("{label}: {done}/{total} {unit}{bytes_part}{rate}"),
                }
            }
        }
    }

    /// A line of its own on stderr (above any bar).
    pub fn note(&mut self, line: &str) {
        self.finish();
        errln!("{line}");
    }

    /// Leaves the current bar drawn at its last state.
    pub fn finish(&mut self) {
        if let Some(Counter { bar: Some(bar), .. }) = self.current.take() {
            bar.abandon();
        }
    }
}

fn new_bar(label: &str, total: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let template = format!("{{prefix}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit}{{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_string());
    bar
}

fn per_sec_bytes(b: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs < 0.05 || b == 0 {
        return String::new();
    }
    format!(" ({}/s)", bytes((b as f64 / secs) as u64))
}

/// ", 1,234 records/s, ETA 3.2 s" once the rate can be told.
fn rate_and_eta(done: u64, total: u64, unit: &str, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs < 0.05 || done == 0 {
        return String::new();
    }
    let rate = done as f64 / secs;
    let mut s = format!(", {} {unit}/s", count(rate.round() as u64));
    if done < total {
        let eta = Duration::from_secs_f64((total - done) as f64 / rate);
        s.push_str(&format!(", ETA {}", duration(eta.as_millis() as u64)));
    }
    s
}

/// What an event says. Backup, restore and verify events count records or
/// chunks; migration events name their version; others are one-liners.
fn describe(event: &Value) -> Shown {
    let phase = text(&event["phase"]);
    if let Some(version) = event["version"].as_u64() {
        let line = migration_line(version, event);
        return match (
            event["records_done"].as_u64(),
            event["records_total"].as_u64(),
        ) {
            (Some(done), Some(total)) => Shown::Count {
                label: line,
                done,
                total,
                unit: "records",
                written: None,
            },
            _ => Shown::Line(migration_detail(line, event)),
        };
    }
    if phase == "waiting_for_lock" {
        return Shown::Line(format!(
            "waiting for the migration lock, held by {}",
            text(&event["holder"])
        ));
    }
    if phase == "restore_point" {
        let names: Vec<String> = event["collections"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        return Shown::Line(format!("taking a restore point of {}", names.join(", ")));
    }
    if phase == "done" {
        return Shown::Line(format!(
            "snapshot {} written{}",
            text(&event["snapshot"]),
            event["bytes_written"]
                .as_u64()
                .map(|b| format!(" ({} new)", bytes(b)))
                .unwrap_or_default()
        ));
    }
    if let (Some(done), Some(total)) = (
        event["records_done"].as_u64(),
        event["records_total"].as_u64(),
    ) {
        return Shown::Count {
            label: format!("{phase} {}", text(&event["collection"])),
            done,
            total,
            unit: "records",
            written: event["bytes_written"].as_u64(),
        };
    }
    if let (Some(done), Some(total)) = (
        event["chunks_done"].as_u64(),
        event["chunks_total"].as_u64(),
    ) {
        return Shown::Count {
            label: phase,
            done,
            total,
            unit: "chunks",
            written: None,
        };
    }
    // An event this CLI does not know: its fields, as words.
    let fields: Vec<String> = event
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "phase")
        .map(|(k, v)| format!("{k} {}", text(v)))
        .collect();
    Shown::Line(format!("{phase}: {}", fields.join(", ")))
}

/// "migration 2 rebuild copy docs" (and " (down)" when undoing).
fn migration_line(version: u64, event: &Value) -> String {
    let mut line = format!("migration {version}");
    if event["phase"] == "migrate_down" {
        line.push_str(" (down)");
    }
    for key in ["operation", "step", "collection"] {
        if let Some(v) = event[key].as_str() {
            line.push(' ');
            line.push_str(v);
        }
    }
    line
}

fn migration_detail(mut line: String, event: &Value) -> String {
    if let Some(f) = event["records_fixed"].as_u64() {
        line.push_str(&format!(": {f} records caught up"));
    }
    if let Some(o) = event["overlap"].as_f64() {
        line.push_str(&format!(": neighbour overlap {o:.3}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(event: Value) -> String {
        match describe(&event) {
            Shown::Line(l) => l,
            Shown::Count {
                label,
                done,
                total,
                unit,
                ..
            } => format!("{label}: {done}/{total} {unit}"),
        }
    }

    #[test]
    fn events_read_as_words() {
        assert_eq!(
            line(
                json!({"phase": "backup", "collection": "docs", "records_done": 32, "records_total": 300, "bytes_written": 0})
            ),
            "backup docs: 32/300 records"
        );
        assert_eq!(
            line(json!({"phase": "verify", "chunks_done": 1, "chunks_total": 4})),
            "verify: 1/4 chunks"
        );
        assert_eq!(
            line(json!({"phase": "done", "snapshot": "ab12", "bytes_written": 2048})),
            "snapshot ab12 written (2.0 KiB new)"
        );
        assert_eq!(
            line(
                json!({"phase": "migrate", "version": 1, "operation": "update_collection_metadata", "collection": "docs"})
            ),
            "migration 1 update_collection_metadata docs"
        );
        assert_eq!(
            line(
                json!({"phase": "migrate", "version": 2, "operation": "rebuild", "step": "verify", "collection": "docs", "overlap": 0.98})
            ),
            "migration 2 rebuild verify docs: neighbour overlap 0.980"
        );
        assert_eq!(
            line(json!({"phase": "restore_point", "collections": ["a", "b"]})),
            "taking a restore point of a, b"
        );
        assert!(!line(json!({"phase": "new_thing", "n": 3})).contains('{'));
    }

    #[test]
    fn plain_lines_carry_rate_and_eta() {
        let s = rate_and_eta(100, 300, "records", Duration::from_secs(2));
        assert_eq!(s, ", 50 records/s, ETA 4.0 s");
        assert_eq!(
            rate_and_eta(300, 300, "records", Duration::from_secs(3)),
            ", 100 records/s"
        );
        assert_eq!(rate_and_eta(0, 300, "records", Duration::from_secs(3)), "");
    }
}
