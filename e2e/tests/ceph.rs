//! The whole data path onto Ceph: host driver (libblkio over vhost-user) -> pov-dpud
//! -> TLS -> pov-proxy --backend ceph -> CephFS on a dev cluster started by
//! `scripts/ceph-dev` (stopped when the test ends). Outside CI the test is skipped
//! (loudly) when Ceph is not installed; under CI=true it fails.

use pov_e2e::{pattern, Stack};
use pov_proxy::backend::ceph::dev::DevCluster;
use serde_json::json;
use std::path::Path;
use std::process::Command;

fn write_tree(root: &Path) -> usize {
    let sizes = [0usize, 1, 511, 4096, 65_537, (1 << 20) + 3, 3 << 20];
    for (i, n) in sizes.iter().enumerate() {
        let d = root.join(format!("level{}/deeper{}", i % 3, i % 2));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("blob{i}")), pattern(*n, 7 + i as u64)).unwrap();
    }
    for i in 0..25 {
        std::fs::write(root.join(format!("note{i}.txt")), format!("note {i}\n")).unwrap();
    }
    sizes.len() + 25
}

fn ok(mut c: Command) -> String {
    let out = c.output().expect("run pov-host");
    assert!(out.status.success(), "{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn host_directory_tree_round_trip_through_ceph() {
    let Some(cluster) = DevCluster::shared() else { return };
    let spec = format!("ceph:conf={},root=/e2e", cluster.conf().display());
    let stack = Stack::start_on(Some(&spec), json!({}));
    let work = tempfile::tempdir().unwrap();
    let (src, out) = (work.path().join("src"), work.path().join("out"));
    let files = write_tree(&src);
    let mut c = stack.host_cmd();
    c.args(["cp", "-r"]).arg(&src).arg("pov:/tree");
    ok(c);
    let mut c = stack.host_cmd();
    c.args(["cp", "-r", "pov:/tree"]).arg(&out);
    ok(c);
    let diff = Command::new("diff").arg("-r").arg(&src).arg(&out).output().expect("run diff");
    assert!(diff.status.success(), "trees differ:\n{}", String::from_utf8_lossy(&diff.stdout));
    let copied = walk(&out);
    assert_eq!(copied, files, "every file came back");
    // The files really are in CephFS: a second proxy on the same cluster sees them.
    let mut b = pov_proxy::backend::ceph::CephBackend::open(&cluster.config("/e2e")).expect("mount");
    use pov_proxy::backend::Backend;
    let s = b.stat("acme", "tree/level0/deeper0/blob6").expect("stat in CephFS");
    assert_eq!(s.size, 3 << 20);
    let mut c = stack.host_cmd();
    c.args(["rm", "-r", "pov:/tree"]);
    ok(c);
    assert_eq!(b.stat("acme", "tree").map(|_| ()), Err(pov_proto::Status::NotFound));
    drop(b);
    drop(stack);
}

fn walk(p: &Path) -> usize {
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| if e.file_type().unwrap().is_dir() { walk(&e.path()) } else { 1 })
        .sum()
}
