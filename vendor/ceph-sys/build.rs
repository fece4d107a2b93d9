//! Generates the bindings of `ceph-sys` into `$OUT_DIR/bindings.rs` with bindgen (libclang)
//! from the installed Ceph headers, and links libcephfs, librados and librbd.

use std::path::PathBuf;

/// Functions the proxy's safe wrappers (`proxy/src/sys/{cephfs,rados}.rs`) call. Adding a
/// call there means adding its name here.
const FUNCTIONS: &[&str] = &[
    // libcephfs
    "ceph_create",
    "ceph_conf_read_file",
    "ceph_conf_set",
    "ceph_init",
    "ceph_mount",
    "ceph_set_uuid",
    "ceph_start_reclaim",
    "ceph_finish_reclaim",
    "ceph_unmount",
    "ceph_release",
    "ceph_open",
    "ceph_close",
    "ceph_read",
    "ceph_write",
    "ceph_ftruncate",
    "ceph_fsync",
    "ceph_fstatx",
    "ceph_statx",
    "ceph_mkdir",
    "ceph_rename",
    "ceph_setattrx",
    "ceph_statfs",
    "ceph_sync_fs",
    "ceph_unlink",
    "ceph_rmdir",
    "ceph_opendir",
    "ceph_readdir_r",
    "ceph_closedir",
    // librados
    "rados_create2",
    "rados_conf_read_file",
    "rados_conf_set",
    "rados_connect",
    "rados_shutdown",
    "rados_ioctx_create",
    "rados_ioctx_destroy",
    "rados_write",
    "rados_read",
    "rados_remove",
    "rados_mon_command",
    "rados_buffer_free",
    // librbd
    "rbd_create",
    "rbd_open",
    "rbd_close",
    "rbd_get_size",
    "rbd_read",
    "rbd_write",
    "rbd_flush",
];

/// Types named by the wrappers (the argument types of [`FUNCTIONS`] come along anyway).
const TYPES: &[&str] =
    &["ceph_mount_info", "ceph_dir_result", "ceph_statx", "dirent", "statvfs", "rados_t", "rados_ioctx_t", "rbd_image_t"];

/// Macros the wrappers use.
const VARS: &[&str] = &[
    "CEPH_STATX_INO",
    "CEPH_STATX_MODE",
    "CEPH_STATX_SIZE",
    "CEPH_STATX_MTIME",
    "CEPH_RECLAIM_RESET",
    "CEPH_SETATTR_MODE",
    "CEPH_SETATTR_MTIME",
];

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    let mut builder = bindgen::Builder::default()
        .header("wrapper.h")
        // libcephfs.h refuses to compile without it (readdir results would be corrupted).
        .clang_arg("-D_FILE_OFFSET_BITS=64")
        // Keep the headers' doc comments (they sit in system include directories).
        .clang_arg("-fretain-comments-from-system-headers")
        .derive_default(true)
        .merge_extern_blocks(true)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for f in FUNCTIONS {
        builder = builder.allowlist_function(format!("^{f}$"));
    }
    for t in TYPES {
        builder = builder.allowlist_type(format!("^{t}$"));
    }
    for v in VARS {
        builder = builder.allowlist_var(format!("^{v}$"));
    }
    let bindings = builder.generate().unwrap_or_else(|e| {
        panic!(
            "ceph-sys: cannot generate the Ceph bindings ({e}). It needs libclang (Debian: libclang-dev) and \
             the headers of libcephfs-dev, librados-dev and librbd-dev: run ci/install-deps.sh, or build \
             pov-proxy without Ceph (--no-default-features)"
        )
    });
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("bindings.rs");
    bindings.write_to_file(&out).unwrap_or_else(|e| panic!("ceph-sys: writing {}: {e}", out.display()));
    for lib in ["cephfs", "rados", "rbd"] {
        println!("cargo:rustc-link-lib={lib}");
    }
}
