//! Chroma: typed v2 client, connection pool, retry policy, circuit breaker,
//! `ProductionChromaStore` that ties them together, journaled name swaps
//! (`swap`), and a local Chroma's own files read read-only (`local`).

pub mod breaker;
pub mod client;
pub mod configuration;
pub mod courtesy;
pub mod error;
pub mod local;
pub mod names;
pub mod pool;
pub mod retriever;
pub mod retry;
pub mod store;
pub mod swap;

pub use breaker::{BreakerState, CircuitBreaker};
pub use client::{
    encode_embedding, plan_batches, ChromaClient, Collection, CreateCollection, GetRequest,
    GetResult, Include, Metadata, ModifyCollection, PreFlight, QueryRequest, QueryResult,
    RecordBatch, ServerInfo, WriteOp, MAX_REQUEST_BYTES, WRITE_REQUEST_BYTES,
};
pub use error::{ChromaError, ConnectionPoolError, RetryExhaustedError};
pub use pool::{ConnectionPool, EndpointStatus, Lease, PoolStatus};
pub use retriever::{DenseRetriever, RankedResult};
pub use retry::{Attempt, CallKind, Decision, GiveUp, RetryBudget, RetryManager};
pub use store::ProductionChromaStore;

#[cfg(test)]
mod secret_tests;
