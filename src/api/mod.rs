//! The API layer: one thin tonic service per dialect over the task layer.
//! Handlers validate, call one task-layer function, and map results and
//! errors (`status`) to wire types. Envoy turns these into REST.

pub mod agent;
mod convert;
mod paging;
pub mod status;
pub mod trae;
mod upload;
pub mod websocket;

pub use agent::AgentApi;
pub use trae::TraeApi;
