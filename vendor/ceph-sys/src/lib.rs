//! Raw FFI bindings to the parts of Ceph's client libraries that `pov-proxy` uses:
//! libcephfs (`<cephfs/libcephfs.h>`, the CephFS client), librados
//! (`<rados/librados.h>`, object IO) and librbd (`<rbd/librbd.h>`, block images).
//!
//! The bindings are generated at build time by `bindgen` from the headers installed on
//! the build machine (Debian packages `libcephfs-dev`, `librados-dev`, `librbd-dev`;
//! bindgen needs `libclang-dev`), compiled with `-D_FILE_OFFSET_BITS=64` as
//! libcephfs requires, so struct layouts such as `ceph_statx` and `dirent` are
//! the C compiler's, never hand-copied. Only the functions, types and constants in
//! `build.rs`'s allowlists are generated; the crate links `cephfs`, `rados` and `rbd`.
//!
//! Every function is `unsafe` and follows the C conventions of its header: a negative
//! errno (or a count) as the return value, caller-owned out-pointers, NUL-terminated
//! strings. The safe wrappers live in `pov-proxy` (`pov_proxy::sys::cephfs`,
//! `pov_proxy::sys::rados`).

#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case, missing_docs)]
// Generated code: bindgen's `Default` impls and layout checks carry no SAFETY comments.
#![allow(clippy::undocumented_unsafe_blocks, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
