//! The seed corpora of this crate's fuzz targets (`fuzz/seeds/virtio_chain`,
//! `fuzz/seeds/rpc`) replayed through the same bodies the fuzzers run
//! (`pov_dpu_firmware::fuzz`). Its own test binary: the RPC body replaces the `tcp`
//! transport of the process with one that never connects.

use pov_dpu_firmware::fuzz;

#[test]
fn virtio_chain_seeds_replay() {
    assert!(pov_proto::fuzz::replay("virtio_chain", fuzz::virtio_chain) > 0);
    for s in fuzz::chain_seeds() {
        fuzz::virtio_chain(&s);
    }
}

#[test]
fn rpc_seeds_replay() {
    assert!(pov_proto::fuzz::replay("rpc", fuzz::rpc) > 0);
}

#[test]
#[ignore = "writes fuzz/seeds/: run by hand after a format change"]
fn write_seeds() {
    pov_proto::fuzz::write_valid_seeds("virtio_chain", &fuzz::chain_seeds());
}
