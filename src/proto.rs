//! Generated wire types and service traits (from `proto/`).
#![allow(clippy::all, missing_docs)]

pub mod agentd {
    pub mod v1 {
        tonic::include_proto!("agentd.v1");
    }
    pub mod trae {
        pub mod v1 {
            tonic::include_proto!("agentd.trae.v1");
        }
    }
    pub mod agent {
        pub mod v1 {
            tonic::include_proto!("agentd.agent.v1");
        }
    }
    pub mod console {
        pub mod v1 {
            tonic::include_proto!("agentd.console.v1");
        }
    }
}

pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// The encoded FileDescriptorSet of every proto above, with `google.api.http`
/// options intact: served by reflection and written out for Envoy.
pub const DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/agentd_descriptor.bin"));

pub use agentd::agent::v1 as ap;
pub use agentd::console::v1 as console;
pub use agentd::trae::v1 as trae;
pub use agentd::v1::TaskEvent;
