//! Circuit breaker of one endpoint: a pure state machine over an injected
//! `Instant`. Closed → open after `failure_threshold` consecutive transient
//! failures → half-open after `open_duration` (one probe at a time) →
//! closed on the probe's success, open again on its failure.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::BreakerConfig;

/// The state as reported in `status` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { since: Instant },
    HalfOpen { probe_in_flight: bool },
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    threshold: u32,
    open_duration: Duration,
    state: State,
    consecutive_failures: u32,
}

impl CircuitBreaker {
    pub fn new(config: &BreakerConfig) -> Self {
        CircuitBreaker {
            threshold: config.failure_threshold.max(1),
            open_duration: config.open_duration,
            state: State::Closed,
            consecutive_failures: 0,
        }
    }

    /// The state at `now` (an open breaker whose time is up reads half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { since } if now.saturating_duration_since(since) >= self.open_duration => {
                BreakerState::HalfOpen
            }
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Whether a call may go through now, without taking the probe slot.
    pub fn would_allow(&self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { since } => now.saturating_duration_since(since) >= self.open_duration,
            State::HalfOpen { probe_in_flight } => !probe_in_flight,
        }
    }

    /// Ask to make a call at `now`. In half-open, only one probe is let
    /// through until it reports back.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { since } => {
                if now.saturating_duration_since(since) >= self.open_duration {
                    self.state = State::HalfOpen {
                        probe_in_flight: true,
                    };
                    true
                } else {
                    false
                }
            }
            State::HalfOpen { probe_in_flight } => {
                if probe_in_flight {
                    false
                } else {
                    self.state = State::HalfOpen {
                        probe_in_flight: true,
                    };
                    true
                }
            }
        }
    }

    /// Time until an open breaker lets a probe through.
    pub fn retry_in(&self, now: Instant) -> Duration {
        match self.state {
            State::Open { since } => self
                .open_duration
                .saturating_sub(now.saturating_duration_since(since)),
            _ => Duration::ZERO,
        }
    }

    /// The call succeeded (or failed in a way that proves the endpoint works, e.g. a 4xx).
    pub fn on_success(&mut self) {
        self.consecutive_failures = 0;
        self.state = State::Closed;
    }

    /// The call failed transiently.
    pub fn on_failure(&mut self, now: Instant) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        match self.state {
            State::Closed if self.consecutive_failures >= self.threshold => {
                self.state = State::Open { since: now };
            }
            State::HalfOpen { .. } => self.state = State::Open { since: now },
            _ => {}
        }
    }

    /// A granted call ended without a verdict (cancelled): free the probe slot.
    pub fn on_abandon(&mut self) {
        if let State::HalfOpen { .. } = self.state {
            self.state = State::HalfOpen {
                probe_in_flight: false,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(&BreakerConfig {
            failure_threshold: 3,
            open_duration: Duration::from_secs(10),
        })
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let t = Instant::now();
        let mut b = breaker();
        b.on_failure(t);
        b.on_failure(t);
        b.on_success();
        b.on_failure(t);
        b.on_failure(t);
        assert_eq!(b.state(t), BreakerState::Closed);
        b.on_failure(t);
        assert_eq!(b.state(t), BreakerState::Open);
        assert!(!b.try_acquire(t + Duration::from_secs(9)));
        assert_eq!(
            b.retry_in(t + Duration::from_secs(9)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn half_open_lets_one_probe_through_then_closes() {
        let t = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(t);
        }
        let later = t + Duration::from_secs(10);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert!(b.try_acquire(later));
        assert!(!b.try_acquire(later), "only one probe");
        b.on_success();
        assert_eq!(b.state(later), BreakerState::Closed);
        assert!(b.try_acquire(later));
    }

    #[test]
    fn failed_probe_reopens() {
        let t = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(t);
        }
        let later = t + Duration::from_secs(11);
        assert!(b.try_acquire(later));
        b.on_failure(later);
        assert_eq!(b.state(later), BreakerState::Open);
        assert!(!b.try_acquire(later + Duration::from_secs(5)));
        assert!(b.try_acquire(later + Duration::from_secs(10)));
        b.on_abandon();
        assert!(b.try_acquire(later + Duration::from_secs(10)));
    }
}
