//! chromaprod: a production companion daemon for Chroma.
//!
//! The modules follow the architecture in the design (README, "Layout"):
//! `config` (load, validate, diff, watch), `chroma` (typed v2 client, pool,
//! retry, breaker, the swap journal, Chroma's configuration and name rules,
//! and `local`: a local Chroma's files read-only), `storage` (the `Backend`
//! contract: local disk, S3, Azure, GCS), `backup` (format, crypto,
//! repository, and one file or folder per operation: create, verify,
//! restore, delta, prune, diff, physical, recall), `migrate` (files, plan,
//! up, down, rebuild, lease), `schedule` (pure plans and retention, a thin
//! scheduler), `doctor` (one file per check), `control` (Unix-socket
//! protocol, access levels, server and client), `commands` (one typed
//! request and outcome per verb — backup, restore, restore_physical,
//! verify, prune, delete, list, show, diff, check, query, migrate — and the
//! one dispatch the daemon, its scheduler and the offline CLI share),
//! `daemon` (start-up, reload, control handler, stop, jobs, systemd),
//! `observe` (logging, metrics, health, audit). Nothing below `daemon`
//! imports it. Leaves every layer may use: `progress` (typed progress
//! events and their subscribers), `host` (this host's name and clock),
//! `secret` (values that never print), `owner` (files a root-run command
//! leaves to their directory's owner) and `mem`. The binary's `cli` module
//! (src/cli/) holds the arguments, remote calls and rendering.
//! `scripts/check-architecture.sh` (run by `make test`) checks the layering
//! and the size of every file.

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
