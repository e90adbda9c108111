//! Observability: logging, metrics, health, audit.

pub mod metrics;

pub use metrics::{MetricsCollector, Outcome};
pub mod logging;
pub mod http;
pub mod health;
