//! The control socket: protocol, server and client.
//!
//! The wire format is documented in [`protocol`] and in
//! `docs/control-protocol.md`.

pub mod access;
pub mod client;
pub mod protocol;
pub mod server;

pub use access::{Access, Clearance};
pub use client::{call, call_with, CallOptions, ClientError};
pub use protocol::{kind, Command, ErrorBody, Level, Line, Request, PROTOCOL_VERSION};
pub use server::{bind, serve, ControlError, EventSink, Handler, HandlerError, Limits, Peer};
