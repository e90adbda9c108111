//! Watches the config file and reports changes (filled in with the daemon).
