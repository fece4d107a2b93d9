//! The seed corpora of this crate's fuzz targets (`fuzz/seeds/virtio_chain`,
//! `fuzz/seeds/rpc`) replayed through the same bodies the fuzzers run
//! (`pov_dpu_firmware::fuzz`). Its own test binary: the RPC body replaces the `tcp`
//! transport of the process with one that never connects.

use pov_dpu_firmware::fuzz;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the panic hook: the RPC server turns a method's panic into an internal error
/// answer, which a fuzzer (whose panic hook aborts) reports but a plain replay would not.
static PANICKED: AtomicBool = AtomicBool::new(false);

#[test]
fn virtio_chain_seeds_replay() {
    assert!(pov_proto::fuzz::replay("virtio_chain", fuzz::virtio_chain) > 0);
    for s in fuzz::chain_seeds() {
        fuzz::virtio_chain(&s);
    }
}

#[test]
fn rpc_seeds_replay() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, Ordering::SeqCst);
        default(info);
    }));
    assert!(pov_proto::fuzz::replay("rpc", fuzz::rpc) > 0);
    assert!(!PANICKED.load(Ordering::SeqCst), "a panic during the replay (see the output)");
}

#[test]
#[ignore = "writes fuzz/seeds/: run by hand after a format change"]
fn write_seeds() {
    pov_proto::fuzz::write_valid_seeds("virtio_chain", &fuzz::chain_seeds());
}
