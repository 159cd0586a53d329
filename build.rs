// Builds the admin API from proto/ (needs `protoc`, which containerd-client needs too).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/peermirror/v1/admin.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/peermirror/v1/admin.proto"], &["proto"])?;
    // The kubelet's image pull (CRI), client side only: `peermirror::cri` for the tests
    // (feature `cri-client`).
    println!("cargo:rerun-if-changed=proto/cri/runtime/v1/api.proto");
    if std::env::var_os("CARGO_FEATURE_CRI_CLIENT").is_some() {
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(false)
            .compile_protos(&["proto/cri/runtime/v1/api.proto"], &["proto/cri"])?;
    }
    Ok(())
}
