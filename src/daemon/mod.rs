//! Daemon lifecycle: start-up, systemd notification, reload, shutdown.

pub mod sd;
pub mod watchdog;
