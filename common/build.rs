//! Generates the gRPC code from `../proto/hbac.proto`, and the ONNX messages `hbac export`
//! writes from `../proto/onnx.proto`, with a vendored `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=../proto/hbac.proto");
    println!("cargo:rerun-if-changed=../proto/onnx.proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // For gRPC server reflection on the coordinator.
        .file_descriptor_set_path(out.join("hbac_descriptor.bin"))
        .compile_protos(&["../proto/hbac.proto"], &["../proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_protos(&["../proto/onnx.proto"], &["../proto"])?;
    Ok(())
}
