//! Generates the CSI protobuf messages from `proto/` (only with the `csi` feature).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=proto");
}
