//! Shared test harness: a real Chroma server, a TCP fault proxy, a
//! `NOTIFY_SOCKET` listener, object-store emulators and the daemon binary as
//! a child process.
#![allow(dead_code)]

pub mod chroma;
pub mod daemon;
pub mod emulators;
pub mod notify;
pub mod proxy;
pub mod records;
