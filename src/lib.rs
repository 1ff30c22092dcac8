//! agentd: runs AI coding-agent tasks as a service.
//!
//! Layers, top to bottom (each calls only the ones below it):
//! `api` (one tonic facade per dialect) → `tasks` (the task manager) →
//! `agentd_engine` (the agent loop, a separate crate) and `store` (durable
//! state). `server` wires them to a port; Envoy (`envoy/`) adds REST.

pub mod api;
pub mod clock;
pub mod console;
pub mod error;
pub mod host;
pub mod metrics;
pub mod paths;
pub mod proto;
pub mod server;
pub mod store;
pub mod tasks;
