//! Daemon lifecycle: start-up, systemd notification, reload, shutdown.
