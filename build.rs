//! Compiles `proto/` with a protoc that ships inside the `protoc-bin-vendored` crate, so a
//! fresh machine with no system `protoc` builds the project. The file descriptor set is
//! kept for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A system protoc set through PROTOC wins; otherwise use the vendored one.
    if std::env::var_os("PROTOC").is_none() {
        // Build scripts run single-threaded here, so setting the environment is sound.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let include = protoc_bin_vendored::include_path()?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("gws_sms_v1_descriptor.bin"))
        .compile_protos(
            &[PathBuf::from("proto/gws/sms/v1/sms_session.proto")],
            &[PathBuf::from("proto"), include],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
