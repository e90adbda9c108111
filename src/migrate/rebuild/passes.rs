//! When a catch-up that has not converged gives up.
//!
//! A steady writer leaves each pass about as many records to fix as it
//! wrote during the pass before. While the catch-up outruns it, each pass
//! fixes fewer records than the one before, and it converges, however many
//! passes that takes (at 100,000 records and 50 records/s, passes of
//! 12,240 → 5,520 → 3,060 → … → 120 records: docs/benchmarks.md, run M4).
//! A pass that fixed no fewer than the one before made no headway; the
//! first pass counts as one too. `max_passes` such passes end the rebuild,
//! refused: the writers outrun it.
//!
//! A pass ends the catching up ([`Passes::converged`]) when it found
//! nothing, or fixed at most `max_lag` records, or took at most
//! `max_lag_ms`. Beside writers that keep Chroma's write queue long, no
//! pass can take less than one write request's wait, however little it
//! has to fix: a pass that made no headway, whose fixes went as one write
//! request and whose other work took at most `max_lag_ms`, is as short as
//! a pass can get, and ends it too. The copy then trails the source by
//! about one write's time at Chroma, which is as long as Chroma takes to
//! acknowledge any client's write then.

use std::time::Duration;

use super::write::Writes;

/// The catch-up's passes so far.
#[derive(Debug)]
pub(super) struct Passes {
    max: u32,
    /// Passes in all, and those that made no headway.
    pub done: u32,
    stalled: u32,
    last: Option<u64>,
    /// Whether the latest pass fixed fewer records than the one before it
    /// (none for the first).
    headway: Option<bool>,
}

/// What one catch-up pass did, as the end test reads it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PassFacts {
    pub fixed: u64,
    /// How far apart the two collections' counts were after it.
    pub apart: u64,
    /// Its time, before the counts were read.
    pub took: Duration,
    pub writes: Writes,
}

impl Passes {
    /// Gives up after `max_passes` passes without headway.
    pub fn new(max_passes: u32) -> Self {
        Passes {
            max: max_passes.max(1),
            done: 0,
            stalled: 0,
            last: None,
            headway: None,
        }
    }

    /// A pass fixed `fixed` records: whether, if it did not converge, the
    /// catch-up gives up.
    pub fn after(&mut self, fixed: u64) -> bool {
        self.done += 1;
        if self.last.is_none_or(|last| fixed >= last) {
            self.stalled += 1;
        }
        self.headway = self.last.map(|last| fixed < last);
        self.last = Some(fixed);
        self.stalled >= self.max
    }

    /// Whether the pass just counted by [`Self::after`] ends the catching
    /// up (see the module).
    pub fn converged(&self, p: &PassFacts, max_lag: u64, max_lag_ms: u64) -> bool {
        let max_lag_time = Duration::from_millis(max_lag_ms);
        if (p.fixed == 0 && p.apart == 0) || (p.fixed <= max_lag && p.apart <= max_lag) {
            return true;
        }
        // `max_lag = 0` asks for a pass that finds nothing, however short.
        if max_lag == 0 || p.apart > p.fixed.max(max_lag) {
            return false;
        }
        let at_floor = self.headway == Some(false)
            && p.writes.requests <= 1
            && p.took.saturating_sub(p.writes.time) <= max_lag_time;
        p.took <= max_lag_time || at_floor
    }
}

/// How long the settle step copies writes that reach the old collection:
/// `settle_ms`, and at least twice the longest write of the last pass (a
/// write a client sent to the old collection just before the swap waits in
/// Chroma's queue about as long before it lands).
pub(super) fn settle_for(settle_ms: u64, last: &Writes) -> Duration {
    Duration::from_millis(settle_ms).max(last.longest * 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passes until the first `true`, or all of them.
    fn run(max_passes: u32, fixed: &[u64]) -> (u32, bool) {
        let mut p = Passes::new(max_passes);
        for f in fixed {
            if p.after(*f) {
                return (p.done, true);
            }
        }
        (p.done, false)
    }

    #[test]
    fn a_catch_up_that_keeps_shrinking_goes_on_past_max_passes() {
        // Run M4's passes: refused after ten under a plain count of passes.
        let m4 = [
            12_240, 5_520, 3_060, 1_640, 1_080, 1_000, 480, 300, 240, 120, 60,
        ];
        assert_eq!(run(10, &m4), (11, false));
        assert_eq!(run(2, &m4), (11, false), "only the first pass counted");
    }

    #[test]
    fn passes_that_make_no_headway_end_it() {
        // Run M3's plateau (each pass reading both collections whole).
        let m3 = [
            3_740, 620, 480, 460, 540, 480, 500, 460, 420, 460, 470, 455, 480,
        ];
        assert_eq!(run(3, &m3), (7, true), "3,740, then 540 and 500");
        assert_eq!(run(10, &m3), (13, false));
        // A writer that outruns every pass.
        assert_eq!(run(4, &[100, 150, 200, 250, 300]), (4, true));
        // One pass, as `max_passes = 1` always meant.
        assert_eq!(run(1, &[5_000, 10]), (1, true));
        assert_eq!(run(0, &[5_000, 10]), (1, true), "at least one pass");
    }

    fn pass(fixed: u64, took_ms: u64, requests: u32, write_ms: u64) -> PassFacts {
        PassFacts {
            fixed,
            apart: 0,
            took: Duration::from_millis(took_ms),
            writes: Writes {
                requests,
                time: Duration::from_millis(write_ms),
                longest: Duration::from_millis(write_ms / u64::from(requests.max(1))),
            },
        }
    }

    /// Counts `passes` and answers for the last one.
    fn ends(passes: &[PassFacts]) -> bool {
        let mut p = Passes::new(10);
        for f in passes {
            p.after(f.fixed);
        }
        p.converged(passes.last().expect("a pass"), 100, 1_000)
    }

    #[test]
    fn a_pass_within_max_lag_or_max_lag_ms_ends_the_catching_up() {
        assert!(ends(&[pass(0, 40_000, 0, 0)]), "nothing to fix");
        assert!(ends(&[pass(90, 9_000, 1, 8_000)]), "at most max_lag");
        assert!(ends(&[pass(400, 900, 1, 500)]), "at most max_lag_ms");
        assert!(!ends(&[pass(400, 1_100, 1, 500)]));
        let apart = PassFacts {
            apart: 500,
            ..pass(400, 900, 1, 500)
        };
        assert!(!ends(&[apart]), "counts further apart than it fixed");
    }

    #[test]
    fn a_pass_at_its_floor_ends_the_catching_up() {
        // Beside a writer that keeps Chroma's queue about 7 s long: each
        // pass waits that long for its one write, and stops shrinking.
        let floor = [pass(2_400, 30_000, 2, 29_000), pass(390, 7_600, 1, 7_000)];
        assert!(
            !ends(&floor),
            "still shrinking: another pass may be shorter"
        );
        let stalled = [floor[0], floor[1], pass(410, 7_700, 1, 7_100)];
        assert!(ends(&stalled), "no headway, one write, the rest 0.6 s");
        // Not at its floor: two write requests, or reads that took long.
        assert!(!ends(&[floor[0], floor[1], pass(410, 15_000, 2, 14_400)]));
        assert!(!ends(&[floor[0], floor[1], pass(410, 9_000, 1, 7_000)]));
        // Comparing both collections whole (run M3's plateau): reads of
        // about 19 s are no floor.
        assert!(!ends(&[
            pass(620, 19_500, 1, 500),
            pass(640, 19_400, 1, 500)
        ]));
        // The first pass has nothing to be compared with.
        assert!(!ends(&[pass(390, 7_600, 1, 7_000)]));
    }

    #[test]
    fn the_settle_step_outlasts_the_last_passes_longest_write() {
        let w = |ms| Writes {
            requests: 1,
            time: Duration::from_millis(ms),
            longest: Duration::from_millis(ms),
        };
        assert_eq!(settle_for(2_000, &w(300)), Duration::from_millis(2_000));
        assert_eq!(settle_for(2_000, &w(7_000)), Duration::from_millis(14_000));
        assert_eq!(settle_for(0, &Writes::default()), Duration::ZERO);
    }
}
