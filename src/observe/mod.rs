//! Observability: logging, metrics, health, audit.

pub mod audit;
pub mod metrics;

pub use audit::{Actor, AuditError, AuditLog};
pub use metrics::{MetricsCollector, Outcome};
pub mod logging;
pub mod http;
pub mod health;
