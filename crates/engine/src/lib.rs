//! The agent engine: what a task runs.
//!
//! `config` resolves a Trae Agent configuration (request > environment > file),
//! `llm` talks to model providers behind one interface, `tools` are what the
//! model may call, and `agent` is the loop that joins them (one step = one LLM
//! turn plus its tool calls). The engine reports what happens as typed
//! [`events::EngineEvent`]s; it never touches gRPC, HTTP serving or storage.

pub mod agent;
pub mod config;
pub mod events;
pub mod llm;
pub mod messages;
pub mod patch;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tools;
mod trajectory;
