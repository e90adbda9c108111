//! The control socket: protocol, server and client.
//!
//! The wire format is documented in [`protocol`] and in
//! `docs/control-protocol.md`.

pub mod client;
pub mod protocol;
pub mod server;

pub use client::{call, call_with, CallOptions, ClientError};
pub use protocol::{kind, Command, ErrorBody, Line, Request, PROTOCOL_VERSION};
pub use server::{bind, serve, ControlError, EventSink, Handler, HandlerError, Limits, Peer};
