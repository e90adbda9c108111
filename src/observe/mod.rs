//! Observability: logging, metrics, health, audit.

pub mod audit;
pub mod metrics;

pub use audit::{Actor, AuditError, AuditLog};
pub use metrics::{FeedReads, MetricsCollector, Outcome};
pub mod health;
pub mod http;
pub mod logging;
