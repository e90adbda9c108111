//! chromaprod: a production companion daemon for Chroma.
//!
//! The modules follow the architecture in the design: `config` (load,
//! validate, diff, watch), `chroma` (typed v2 client, pool, retry, breaker),
//! `control` (Unix-socket protocol, server and client), `commands` (one
//! typed request and outcome per verb — backup, restore, verify, prune,
//! delete, list, show, check, query, migrate — and the one dispatch the
//! daemon, its scheduler and the offline CLI share), `daemon` (start-up,
//! reload, control handler, stop, jobs, systemd), `observe` (logging,
//! metrics, health, audit). Nothing below `daemon` imports it.
//! Leaves every layer may use: `progress` (typed progress events and their
//! subscribers) and `host` (this host's name and clock).

pub mod backup;
pub mod chroma;
pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dist;
pub mod doctor;
pub mod host;
pub mod mem;
pub mod migrate;
pub mod observe;
pub mod owner;
pub mod progress;
pub mod schedule;
pub mod secret;
pub mod storage;

/// Exit code for configuration errors (sysexits' `EX_CONFIG`); the unit's
/// `RestartPreventExitStatus=` keeps systemd from restart-looping on it.
pub const EXIT_CONFIG: i32 = 78;
