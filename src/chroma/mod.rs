//! Chroma: typed v2 client, connection pool, retry policy, circuit breaker.
