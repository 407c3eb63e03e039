#![forbid(unsafe_code)]
//! Regenerates `crates/eskv-server/src/proto/*.rs` from
//! `crates/eskv-server/proto/**.proto`. Run through `cargo xtask protos`
//! after changing a `.proto` file, and commit the result.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("codegen lives inside crates/eskv-server")?
        .to_path_buf();
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    // tonic-prost-build finds protoc through PROTOC; this process sets it
    // for itself only.
    std::env::set_var("PROTOC", &protoc);
    let proto = crate_dir.join("proto");
    let out = crate_dir.join("src").join("proto");
    std::fs::create_dir_all(&out)?;
    let umadb: Vec<PathBuf> = vec![proto.join("umadb/v1/umadb.proto")];
    let kurrent: Vec<PathBuf> = ["shared", "status", "streams", "serverfeatures", "gossip"]
        .iter()
        .map(|f| proto.join("kurrent").join(format!("{f}.proto")))
        .collect();
    for (files, include) in [(umadb, proto.clone()), (kurrent, proto.join("kurrent"))] {
        tonic_prost_build::configure()
            .build_client(false)
            .build_server(true)
            .emit_rerun_if_changed(false)
            .out_dir(&out)
            .compile_protos(&files, &[include, well_known.clone()])?;
    }
    println!("wrote generated code to {}", out.display());
    Ok(())
}
