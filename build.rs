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
    let protos = [PathBuf::from("proto/gws/sms/v1/sms_session.proto")];
    let includes = [PathBuf::from("proto"), include];
    // The messages, and the descriptor set for reflection.
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .file_descriptor_set_path(out.join("gws_sms_v1_descriptor.bin"))
        .compile_protos(&protos, &includes)?;
    // The server, over those messages, with the gateway's codec (a request that is not valid
    // protobuf is the caller's error, INVALID_ARGUMENT, not the server's), and streaming the
    // shared item the events hub fans out: encoded once, however many subscribers it has.
    let server_out = out.join("server");
    std::fs::create_dir_all(&server_out)?;
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&server_out)
        .codec_path("crate::grpc::codec::RequestCodec")
        .extern_path(".gws.sms.v1", "crate::proto")
        .extern_path(
            ".gws.sms.v1.SessionEventsResponse",
            "crate::events::SharedItem",
        )
        .compile_protos(&protos, &includes)?;
    // The client, with prost's own codec (a response that does not decode is not the
    // caller's fault), over the messages generated above.
    let client_out = out.join("client");
    std::fs::create_dir_all(&client_out)?;
    tonic_prost_build::configure()
        .build_server(false)
        .out_dir(&client_out)
        .extern_path(".gws.sms.v1", "crate::proto")
        .compile_protos(&protos, &includes)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
