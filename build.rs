//! Compiles the protos with protox (pure Rust: nothing to install) and writes
//! the descriptor set that reflection and Envoy's transcoder read.

use std::{env, error::Error, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "agentd/v1/events.proto",
    "agentd/trae/v1/trae.proto",
    "agentd/agent/v1/agent.proto",
    "agentd/console/v1/console.proto",
    // Envoy needs these to print error details; reflection clients use them too.
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=third_party/googleapis");
    // sqlx::migrate! embeds these; a new migration must rebuild the crate.
    println!("cargo:rerun-if-changed=src/store/migrations");

    let mut compiler = protox::Compiler::new(["proto", "third_party/googleapis"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;

    // encode_file_descriptor_set() keeps extension options such as
    // google.api.http; file_descriptor_set() (prost-types) silently drops them.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("agentd_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
