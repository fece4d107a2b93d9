//! The block-device conformance body (`testing::conformance`) against all four device
//! models; the proxy-backed ones talk to the real `pov-proxy` (local backend in a
//! temporary directory) over the in-memory transport.

use crate::testing::conformance::{run, DataModel, Subject};
use crate::testing::MemDisk;
use crate::volume::{open_volume, NullVolume, VolumeConfig, VolumeDevice, DEFAULT_VOLUME_TIMEOUT_MS};
use crate::{PovDevice, PovDeviceConfig, TenantTable};
use pov_proxy::backend::BackendSpec;
use pov_proxy::{Server, ServerConfig};
use std::time::Duration;

/// A real proxy listening on `mem:NAME`, storing under a temporary directory.
fn proxy(name: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        ServerConfig { listen: format!("mem:{name}"), backend: BackendSpec::Local(dir.path().into()), ..Default::default() };
    (Server::start(cfg).unwrap(), dir)
}

fn volume_config(name: &str, block_size: u32, proxies: Vec<String>) -> VolumeConfig {
    VolumeConfig {
        name: name.into(),
        volume: name.into(),
        size: 8 << 20,
        block_size,
        proxies,
        request_timeout_ms: DEFAULT_VOLUME_TIMEOUT_MS,
        proxy_ping_after_ms: crate::forward::health::default_ping_after_ms(),
        proxy_down_after_ms: crate::forward::health::default_down_after_ms(),
    }
}

#[test]
fn memdisk_conforms() {
    run(&mut || Subject { dev: Box::new(MemDisk::new(1 << 20, "mem0")), serial_prefix: b"mem0", data: DataModel::Stores });
    run(&mut || Subject {
        dev: Box::new(MemDisk::new(1 << 20, "mem1").with_deferred_completions()),
        serial_prefix: b"mem1",
        data: DataModel::Stores,
    });
}

#[test]
fn null_volume_conforms() {
    for bs in [512, 4096] {
        run(&mut || Subject {
            dev: Box::new(NullVolume::new(volume_config("nv", bs, vec![])).unwrap()),
            serial_prefix: b"vol-nv",
            data: DataModel::Zeros,
        });
    }
}

#[test]
fn volume_conforms() {
    let (server, _dir) = proxy("conformance-volume");
    for bs in [512, 4096] {
        let mut n = 0;
        run(&mut || {
            n += 1;
            let c = volume_config(&format!("v{bs}-{n}"), bs, vec!["mem:conformance-volume".into()]);
            open_volume(&c, Duration::from_secs(5)).unwrap();
            Subject { dev: Box::new(VolumeDevice::new(c).unwrap()), serial_prefix: b"vol-v", data: DataModel::Stores }
        });
    }
    server.shutdown();
}

#[test]
fn pov_device_conforms() {
    let (server, _dir) = proxy("conformance-pov");
    run(&mut || {
        let tenants = TenantTable::default();
        tenants.create("acme", b"pw").unwrap();
        let cfg = PovDeviceConfig::new("pov0", vec!["mem:conformance-pov".into()]);
        Subject { dev: Box::new(PovDevice::new(cfg, tenants).unwrap()), serial_prefix: b"pov-pov0", data: DataModel::PovProtocol }
    });
    server.shutdown();
}
