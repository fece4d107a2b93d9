//! Generates the C header from src/ffi.rs with cbindgen and checks that the committed
//! `include/pov.h` is that header: a stale header fails the build (run the build with
//! `POV_UPDATE_HEADER=1` to rewrite it), so C programs never compile against
//! declarations the library no longer has.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=include/pov.h");
    println!("cargo:rerun-if-env-changed=POV_UPDATE_HEADER");
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("bindings/c/cbindgen.toml");
    let header = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/ffi.rs"))
        .generate()
        .expect("cbindgen could not generate the header from src/ffi.rs");
    let mut generated = Vec::new();
    header.write(&mut generated);
    let committed_path = dir.join("include/pov.h");
    let committed = std::fs::read(&committed_path).unwrap_or_default();
    if generated != committed {
        if std::env::var_os("POV_UPDATE_HEADER").is_some_and(|v| v == "1") {
            std::fs::write(&committed_path, &generated).expect("write include/pov.h");
        } else {
            panic!(
                "bindings/c/include/pov.h is stale (src/ffi.rs changed): rebuild with POV_UPDATE_HEADER=1 \
                 and commit the new header"
            );
        }
    }
}
