//! The CSI messages, generated at build time from `proto/csi.proto` by protobuf-codegen
//! (see `build.rs`). Use them as `proto::csi::GetPluginInfoResponse` etc.

include!(concat!(env!("OUT_DIR"), "/csi/mod.rs"));
