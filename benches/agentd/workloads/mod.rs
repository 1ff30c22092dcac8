//! One module per workload of the suite; each returns rows for the table.

pub mod artifacts;
pub mod engine;
pub mod fanout;
pub mod postgres;
pub mod reads;
pub mod scale;
pub mod writes;
