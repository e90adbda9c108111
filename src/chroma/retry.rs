//! `RetryManager`: the retry policy as pure functions over values —
//! classification, capped exponential backoff with full jitter, an overall
//! deadline and a retry budget. The store's driver carries the decisions out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{RetryConfig, RetryableError};

use super::error::ChromaError;

/// What a call does to the server, which decides what may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// No effect on the server (get, count, query, list, health).
    Read,
    /// A write that gives the same result when applied twice (upsert,
    /// delete records, modify). Retried like a read except on 500, which
    /// may hide a half-applied write.
    IdempotentWrite,
    /// A write whose repetition is visible (create, delete collection):
    /// retried only when the request surely never reached the server
    /// (connect failure) or the server said so (429).
    Write,
}

/// The policy's answer after a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Wait this long, then try again.
    Retry(Duration),
    /// Stop; the reason goes into `RetryExhaustedError` (or, when the
    /// failure is not retryable at all, the error is returned as it is).
    GiveUp(GiveUp),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GiveUp {
    /// Not a transient failure (or not retryable for this kind of call).
    NotRetryable,
    /// `max_retries` used up.
    RetriesExhausted,
    /// The next attempt would start after the overall deadline.
    Deadline,
    /// Too many retries recently (most calls are failing).
    Budget,
}

impl GiveUp {
    pub fn as_str(&self) -> &'static str {
        match self {
            GiveUp::NotRetryable => "not retryable",
            GiveUp::RetriesExhausted => "retries used up",
            GiveUp::Deadline => "deadline reached",
            GiveUp::Budget => "retry budget exhausted: most recent calls failed",
        }
    }
}

/// Facts about one failed attempt, as the policy sees them.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub kind: CallKind,
    /// Failure class, `None` when the failure is not of a retryable kind.
    pub class: Option<RetryableError>,
    /// Attempts made so far, including the one that just failed (>= 1).
    pub attempts: u32,
    /// Time since the call started.
    pub elapsed: Duration,
    /// The server's `Retry-After`, if any.
    pub retry_after: Option<Duration>,
}

/// Token bucket of retries: every call deposits `ratio` tokens, time
/// deposits `min_per_second` per second, a retry takes one token. Capacity
/// is ten seconds' worth of the minimum rate plus 100 calls' deposits.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u32, now: Instant) -> Self {
        let min_per_second = f64::from(min_per_second);
        let capacity = (min_per_second * 10.0 + ratio * 100.0).max(1.0);
        RetryBudget {
            ratio,
            min_per_second,
            capacity,
            tokens: min_per_second.min(capacity),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.min_per_second).min(self.capacity);
    }

    /// A call (first attempt) is being made.
    pub fn on_call(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + self.ratio).min(self.capacity);
    }

    /// Take one retry token; false when the budget is spent.
    pub fn try_retry(&mut self, now: Instant) -> bool {
        self.refill(now);
        // Tolerate float error: 0.2 added ten times is 1.9999999999999998.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn tokens(&self) -> f64 {
        self.tokens
    }
}

/// Source of jitter: a number in `[0, 1)`.
pub type JitterFn = Box<dyn Fn() -> f64 + Send + Sync>;

/// The founding design's `RetryManager`: policy plus the shared budget.
pub struct RetryManager {
    config: RetryConfig,
    budget: Mutex<RetryBudget>,
    jitter: JitterFn,
}

impl std::fmt::Debug for RetryManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryManager")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RetryManager {
    /// A manager with random jitter.
    pub fn new(config: RetryConfig) -> Self {
        Self::with_jitter(config, Box::new(rand::random::<f64>))
    }

    /// A manager with an injected jitter source (tests use a constant).
    pub fn with_jitter(config: RetryConfig, jitter: JitterFn) -> Self {
        let budget = RetryBudget::new(
            config.budget_ratio,
            config.budget_min_per_second,
            Instant::now(),
        );
        RetryManager {
            config,
            budget: Mutex::new(budget),
            jitter,
        }
    }

    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    /// Whether a failure of class `class` may be retried for a `kind` call.
    pub fn is_retryable(&self, kind: CallKind, class: RetryableError) -> bool {
        if !self.config.retryable_errors.contains(&class) {
            return false;
        }
        match kind {
            CallKind::Read => true,
            CallKind::IdempotentWrite => class != RetryableError::InternalError,
            CallKind::Write => matches!(
                class,
                RetryableError::Connect | RetryableError::TooManyRequests
            ),
        }
    }

    /// Capped exponential backoff before retry number `retry` (0-based),
    /// scaled by `jitter` in `[0, 1)` when jitter is on (full jitter).
    pub fn backoff(&self, retry: u32, jitter: f64) -> Duration {
        let c = &self.config;
        let exp = c
            .exponential_base
            .powi(i32::try_from(retry).unwrap_or(i32::MAX));
        let raw = c.base_delay.as_secs_f64() * exp;
        let capped = if raw.is_finite() {
            raw.min(c.max_delay.as_secs_f64())
        } else {
            c.max_delay.as_secs_f64()
        };
        let secs = if c.jitter {
            capped * jitter.clamp(0.0, 1.0)
        } else {
            capped
        };
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// The pure decision after a failed attempt, given a jitter value.
    /// The budget is not consulted here (see [`RetryManager::next`]).
    pub fn decide(&self, a: &Attempt, jitter: f64) -> Decision {
        let Some(class) = a.class else {
            return Decision::GiveUp(GiveUp::NotRetryable);
        };
        if !self.is_retryable(a.kind, class) {
            return Decision::GiveUp(GiveUp::NotRetryable);
        }
        if a.attempts > self.config.max_retries {
            return Decision::GiveUp(GiveUp::RetriesExhausted);
        }
        let mut delay = self.backoff(a.attempts.saturating_sub(1), jitter);
        if let Some(ra) = a.retry_after {
            delay = delay.max(ra);
        }
        if a.elapsed + delay >= self.config.deadline {
            return Decision::GiveUp(GiveUp::Deadline);
        }
        Decision::Retry(delay)
    }

    /// Record the start of a call in the budget.
    pub fn on_call(&self, now: Instant) {
        self.budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .on_call(now);
    }

    /// Decide after a failed attempt, drawing jitter and a budget token.
    pub fn next(&self, a: &Attempt, now: Instant) -> Decision {
        match self.decide(a, (self.jitter)()) {
            Decision::Retry(d) => {
                let ok = self
                    .budget
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .try_retry(now);
                if ok {
                    Decision::Retry(d)
                } else {
                    Decision::GiveUp(GiveUp::Budget)
                }
            }
            g => g,
        }
    }

    /// Facts about a failed attempt of `err`.
    pub fn attempt(kind: CallKind, err: &ChromaError, attempts: u32, elapsed: Duration) -> Attempt {
        Attempt {
            kind,
            class: err.retry_class(),
            attempts,
            elapsed,
            retry_after: err.retry_after(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RetryConfig {
        RetryConfig {
            max_retries: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            exponential_base: 2.0,
            jitter: true,
            retryable_errors: RetryableError::ALL.to_vec(),
            deadline: Duration::from_secs(10),
            budget_ratio: 0.2,
            budget_min_per_second: 0,
        }
    }

    fn attempt(class: Option<RetryableError>, attempts: u32) -> Attempt {
        Attempt {
            kind: CallKind::Read,
            class,
            attempts,
            elapsed: Duration::ZERO,
            retry_after: None,
        }
    }

    #[test]
    fn backoff_is_capped_exponential_with_full_jitter() {
        let m = RetryManager::with_jitter(cfg(), Box::new(|| 0.5));
        assert_eq!(m.backoff(0, 1.0), Duration::from_millis(100));
        assert_eq!(m.backoff(1, 1.0), Duration::from_millis(200));
        assert_eq!(m.backoff(3, 1.0), Duration::from_millis(800));
        assert_eq!(m.backoff(4, 1.0), Duration::from_secs(1));
        assert_eq!(m.backoff(60, 1.0), Duration::from_secs(1));
        assert_eq!(m.backoff(1000, 1.0), Duration::from_secs(1));
        assert_eq!(m.backoff(1, 0.5), Duration::from_millis(100));
        assert_eq!(m.backoff(1, 0.0), Duration::ZERO);
        let mut c = cfg();
        c.jitter = false;
        let m = RetryManager::with_jitter(c, Box::new(|| 0.0));
        assert_eq!(m.backoff(1, 0.0), Duration::from_millis(200));
    }

    #[test]
    fn classification_by_kind() {
        let m = RetryManager::with_jitter(cfg(), Box::new(|| 1.0));
        use RetryableError as R;
        for class in R::ALL {
            assert!(m.is_retryable(CallKind::Read, class), "{class:?}");
        }
        assert!(!m.is_retryable(CallKind::IdempotentWrite, R::InternalError));
        assert!(m.is_retryable(CallKind::IdempotentWrite, R::Reset));
        assert!(m.is_retryable(CallKind::Write, R::Connect));
        assert!(m.is_retryable(CallKind::Write, R::TooManyRequests));
        assert!(!m.is_retryable(CallKind::Write, R::Timeout));
        assert!(!m.is_retryable(CallKind::Write, R::Unavailable));
        let mut c = cfg();
        c.retryable_errors = vec![R::Connect];
        let m = RetryManager::with_jitter(c, Box::new(|| 1.0));
        assert!(!m.is_retryable(CallKind::Read, R::Unavailable));
    }

    #[test]
    fn client_errors_are_never_retried() {
        let m = RetryManager::with_jitter(cfg(), Box::new(|| 1.0));
        for status in [400u16, 401, 403, 404, 409, 413, 422] {
            let err = ChromaError::Http {
                status,
                operation: "get",
                endpoint: "e".into(),
                body_excerpt: String::new(),
                retry_after: None,
            };
            let a = RetryManager::attempt(CallKind::Read, &err, 1, Duration::ZERO);
            assert_eq!(
                m.decide(&a, 1.0),
                Decision::GiveUp(GiveUp::NotRetryable),
                "{status}"
            );
        }
    }

    #[test]
    fn retries_stop_after_max_retries() {
        let m = RetryManager::with_jitter(cfg(), Box::new(|| 1.0));
        let c = Some(RetryableError::Unavailable);
        assert_eq!(
            m.decide(&attempt(c, 1), 1.0),
            Decision::Retry(Duration::from_millis(100))
        );
        assert_eq!(
            m.decide(&attempt(c, 3), 1.0),
            Decision::Retry(Duration::from_millis(400))
        );
        assert_eq!(
            m.decide(&attempt(c, 4), 1.0),
            Decision::GiveUp(GiveUp::RetriesExhausted)
        );
    }

    #[test]
    fn retry_after_is_honoured_and_deadline_respected() {
        let m = RetryManager::with_jitter(cfg(), Box::new(|| 1.0));
        let mut a = attempt(Some(RetryableError::TooManyRequests), 1);
        a.retry_after = Some(Duration::from_secs(2));
        assert_eq!(m.decide(&a, 0.0), Decision::Retry(Duration::from_secs(2)));
        a.elapsed = Duration::from_secs(9);
        assert_eq!(m.decide(&a, 0.0), Decision::GiveUp(GiveUp::Deadline));
        let mut b = attempt(Some(RetryableError::Timeout), 1);
        b.elapsed = Duration::from_millis(9_950);
        assert_eq!(m.decide(&b, 1.0), Decision::GiveUp(GiveUp::Deadline));
    }

    #[test]
    fn budget_limits_retries_to_a_ratio_of_calls() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.2, 0, t0);
        for _ in 0..10 {
            b.on_call(t0);
        }
        assert!(b.try_retry(t0));
        assert!(b.try_retry(t0));
        assert!(!b.try_retry(t0), "only 20% of 10 calls");
        // The minimum rate refills with time.
        let mut b = RetryBudget::new(0.0, 2, t0);
        assert!(b.try_retry(t0));
        assert!(b.try_retry(t0));
        assert!(!b.try_retry(t0));
        assert!(b.try_retry(t0 + Duration::from_millis(500)));
        assert!(!b.try_retry(t0 + Duration::from_millis(500)));
    }

    #[test]
    fn next_gives_up_when_budget_is_spent() {
        let mut c = cfg();
        c.budget_ratio = 0.0;
        c.budget_min_per_second = 0;
        let m = RetryManager::with_jitter(c, Box::new(|| 1.0));
        let now = Instant::now();
        m.on_call(now);
        assert_eq!(
            m.next(&attempt(Some(RetryableError::Reset), 1), now),
            Decision::GiveUp(GiveUp::Budget)
        );
    }
}
