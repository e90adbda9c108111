//! Shared test harness: a real Chroma server, a TCP fault proxy, a
//! `NOTIFY_SOCKET` listener, object-store emulators, the daemon binary as a
//! child process and the CLI without one, seeded collections, and this
//! host's tools. Compiled once, as `crate::common` of the suite
//! (`tests/suite/main.rs`).
#![allow(dead_code)]

pub mod chroma;
pub mod daemon;
pub mod emulators;
pub mod host;
pub mod notify;
pub mod proxy;
pub mod records;
