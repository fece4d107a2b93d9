//! PoV's operator metrics, shared by `pov-dpud` and `pov-proxy`.
//!
//! * [`counters`]: live per-tenant counters (requests by operation, errors by status,
//!   bytes, queue depth, sessions, a latency histogram) that the data path updates
//!   with relaxed atomics and a reader copies at any time, in a bounded registry.
//! * [`expose`]: the Prometheus endpoint (`--metrics-listen ADDR`): families built
//!   from those copies at each scrape, in the OpenMetrics text format.

pub mod counters;
pub mod expose;

pub use counters::{CounterRegistry, HistogramSnapshot, TenantCounters, TenantSnapshot, OVERFLOW_NAME};
pub use expose::{Family, Labels, MetricsServer, Value};
