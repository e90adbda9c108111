//! chromaprod's integration tests: one test crate, linked once.
//!
//! Every test here runs against real parts — a Chroma server, the
//! `chromaprod` binary as a child process (`env!("CARGO_BIN_EXE_chromaprod")`),
//! real Unix sockets and signals, the object-store emulators — started by
//! the shared harness in `tests/common/` (one copy, compiled once, used by
//! every module as `crate::common`). `make test` runs the suite with
//! `cargo nextest run`, which gives each test its own process: a test may
//! set environment variables or signal handlers without disturbing another.
//!
//! Test names carry their module: `cargo nextest run -E 'test(/^doctor::/)'`
//! runs the doctor tests, `cargo test --test suite doctor::` likewise.
//!
//! # Adding tests
//!
//! Put a new group of tests in a module of this directory, not in a new
//! `tests/NAME.rs` (each of those would be another crate to compile and link
//! against the whole library; `make lint` refuses them):
//!
//! 1. `git mv tests/NAME.rs tests/suite/NAME.rs` (or create it there) and add
//!    `mod NAME;` below, in alphabetical order.
//! 2. In the file, replace `mod common;` with `use crate::common;` — the
//!    `common::…` paths then work unchanged.
//! 3. Use the shared helpers before writing one: `common::daemon` (the daemon
//!    process, `cli`, `offline`, `write_config`), `common::records`
//!    (`store_for`, `seed`, `collection_records`), `common::host` (`tool`,
//!    `rt`, `repo`, `some_group`), `common::chroma` (`ChromaServer`,
//!    `free_port`), `common::proxy`, `common::notify`, `common::emulators`.
//!    A helper two modules need goes into `tests/common/`.
//! 4. A test that re-runs this binary as a child (`std::env::current_exe()`)
//!    must name itself with its module path (see `control_socket::child_client`).

#[path = "../common/mod.rs"]
mod common;

mod audit;
mod backup_backends;
mod backup_concurrency;
mod backup_daemon;
mod backup_diff;
mod backup_engine;
mod booted;
mod change_feed;
mod chroma_faults;
mod chroma_ops;
mod cli_output;
mod config_example;
mod control_access;
mod control_socket;
mod daemon_health;
mod delta_restore;
mod doctor;
mod lifecycle;
mod logging;
mod metrics_http;
mod migration_safety;
mod migrations;
mod migrations_daemon;
mod package;
mod physical;
mod recall;
mod reload;
mod runbook;
mod secrets;
mod storage_conformance;
mod swap_recovery;
