//! Shared test harness: a real Chroma server, a TCP fault proxy, a
//! `NOTIFY_SOCKET` listener and the daemon binary as a child process.
#![allow(dead_code)]

pub mod emulators;
