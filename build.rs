//! Generates the CSI protobuf messages from `proto/` (only with the `csi` feature).
//!
//! protobuf-codegen's pure-Rust parser reads `proto/csi.proto` (no `protoc` needed) and
//! writes `$OUT_DIR/csi/{mod.rs,csi.rs}`, which `etcdsnap/csi.rs` includes. The gRPC
//! service glue is written by hand in `etcdsnap/grpc.rs`: grpcio-compiler does not
//! speak protobuf 3.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=proto");
    if std::env::var_os("CARGO_FEATURE_CSI").is_some() {
        generate_csi();
    }
}

#[cfg(feature = "csi")]
fn generate_csi() {
    protobuf_codegen::Codegen::new()
        .pure()
        .include("proto")
        .input("proto/csi.proto")
        .cargo_out_dir("csi")
        .run_from_script();
}

#[cfg(not(feature = "csi"))]
fn generate_csi() {}
