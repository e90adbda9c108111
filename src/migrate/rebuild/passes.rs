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

/// The catch-up's passes so far.
#[derive(Debug)]
pub(super) struct Passes {
    max: u32,
    /// Passes in all, and those that made no headway.
    pub done: u32,
    stalled: u32,
    last: Option<u64>,
}

impl Passes {
    /// Gives up after `max_passes` passes without headway.
    pub fn new(max_passes: u32) -> Self {
        Passes {
            max: max_passes.max(1),
            done: 0,
            stalled: 0,
            last: None,
        }
    }

    /// A pass fixed `fixed` records: whether, if it did not converge, the
    /// catch-up gives up.
    pub fn after(&mut self, fixed: u64) -> bool {
        self.done += 1;
        if self.last.is_none_or(|last| fixed >= last) {
            self.stalled += 1;
        }
        self.last = Some(fixed);
        self.stalled >= self.max
    }
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
}
