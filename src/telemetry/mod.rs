//! Metrics registry and tracing setup.

mod logging;
mod metrics;

pub use logging::{init_logging, LogFormat};
pub use metrics::Metrics;
