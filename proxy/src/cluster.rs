//! The proxy cluster: this proxy's view of the route table, and redirects
//! (`docs/protocol.md`, "Route tables and redirects"; paper §4.3.2).
//!
//! A proxy started with `--cluster FILE --member N` is member `N` of the cluster the
//! file describes ([`ClusterFile`]): the epoch, the placement and the members (their
//! endpoints as DPUs dial them and, with Ceph placement, the OSDs co-located with
//! each). From it the proxy derives the route table ([`pov_proto::route::RouteTable`]):
//!
//! * **hash** placement: `slots` slots (default 64), slot `s` owned by member
//!   `s mod members` unless the file lists `owners` explicitly; epoch = the file's.
//! * **Ceph** placement: the slots are the PGs of the CephFS data pool and each is
//!   owned by the member co-located with the PG's primary OSD (none: any member). The
//!   **route controller** ([`Cluster::refresh_ceph`]) reads the OSD map through the
//!   monitors (`osd dump`, then `pg map` per PG when the map's epoch changed) every
//!   [`REFRESH`]; epoch = the file's epoch + the OSD map's epoch, so it grows when
//!   either does (an OSD going down or up moves PG primaries and bumps the OSD map).
//!
//! Every member computes the same table from the same inputs, so no consensus protocol
//! is needed among proxies: Ceph's monitors already agree on the OSD map, and the file
//! is the operator's. The file is re-read when it changes (checked every [`REFRESH`]),
//! so a changed table takes effect without a restart, and a restarted proxy starts with
//! the current one.
//!
//! **Redirects.** A request whose route epoch is older than this proxy's table and
//! whose slot another member owns is not run: it is answered
//! [`Status::Redirect`] with the encoded table, which the DPU installs before it resends
//! the request to the owner. A request routed with the current (or a newer) epoch is
//! always served, even if it is not this proxy's — the DPU sent it here on purpose (its
//! owner is down) — so a redirect can never loop. Counters: requests served for own
//! slots vs others' (the data-local share with Ceph placement), redirects.

use pov_proto::io::Op;
use pov_proto::route::{Placement, RouteInput, RouteTable, NO_OWNER};
use pov_proto::wire::{ProxyRequest, ProxyResponse};
use pov_proto::Status;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// How often the cluster file and (Ceph placement) the OSD map are checked.
pub const REFRESH: Duration = Duration::from_secs(1);
/// Default number of slots of hash placement.
pub const DEFAULT_SLOTS: u32 = 64;
/// Default object size of Ceph placement (CephFS's default layout), bytes.
pub const DEFAULT_OBJECT_SIZE: u32 = 4 << 20;

/// The cluster file (JSON).
///
/// ```json
/// {"epoch": 1,
///  "placement": {"kind": "hash", "slots": 64},
///  "members": [{"endpoint": "tcp:10.0.0.1:4420"}, {"endpoint": "tcp:10.0.0.2:4420"}]}
/// ```
/// or `"placement": {"kind": "ceph", "pool": "pov-data", "object_size": 4194304}` with
/// `"osds": [0, 3]` per member. Optional `"owners": [0, 1, ...]` (hash placement: the
/// owner of each slot, overriding `s mod members`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// The operator's epoch of this file (≥ 1): raise it with every change.
    pub epoch: u32,
    /// How requests map to slots.
    pub placement: PlacementFile,
    /// The members, in member-index order.
    pub members: Vec<MemberFile>,
    /// Hash placement: owner of each slot (member indexes); default `s mod members`.
    #[serde(default)]
    pub owners: Option<Vec<u8>>,
    /// `false`: never redirect, only count requests as own or other (what a
    /// non-routing DPU's traffic would look like to the cluster: the measurement
    /// baseline of `scripts/route-compare`). Default `true`.
    #[serde(default = "yes")]
    pub redirects: bool,
}

fn yes() -> bool {
    true
}

/// `placement` of a [`ClusterFile`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum PlacementFile {
    /// Hash placement over `slots` slots.
    Hash {
        /// Number of slots (default [`DEFAULT_SLOTS`]).
        #[serde(default = "default_slots")]
        slots: u32,
    },
    /// Ceph placement over the PGs of `pool` (the CephFS data pool).
    Ceph {
        /// The CephFS data pool.
        pool: String,
        /// Object size of the file layout, bytes.
        #[serde(default = "default_object_size")]
        object_size: u32,
    },
}

fn default_slots() -> u32 {
    DEFAULT_SLOTS
}
fn default_object_size() -> u32 {
    DEFAULT_OBJECT_SIZE
}

/// One member of a [`ClusterFile`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberFile {
    /// Its endpoint, as DPUs dial it.
    pub endpoint: String,
    /// Ceph placement: the OSDs on its storage node.
    #[serde(default)]
    pub osds: Vec<i32>,
}

impl ClusterFile {
    /// Reads and checks a cluster file for member `me`.
    ///
    /// Errors: unreadable, not the JSON above, `me` not a member, or a table that
    /// does not validate.
    pub fn load(path: &Path, me: usize) -> anyhow::Result<ClusterFile> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading cluster file {}", path.display()))?;
        let f: ClusterFile = serde_json::from_str(&text)
            .with_context(|| format!("cluster file {}: not a valid cluster description", path.display()))?;
        anyhow::ensure!(
            me < f.members.len(),
            "--member {me}: the cluster file {} has {} members (0-{})",
            path.display(),
            f.members.len(),
            f.members.len().saturating_sub(1)
        );
        let t = f.table(None).with_context(|| format!("cluster file {}", path.display()))?;
        t.validate()?;
        Ok(f)
    }

    /// The route table this file gives, with `ceph` = (OSD map epoch, primary OSD of
    /// each PG) for Ceph placement (`None`: not read yet — every slot unowned, one slot).
    pub fn table(&self, ceph: Option<(u32, &[i32])>) -> Result<RouteTable, pov_proto::route::RouteTableError> {
        let members: Vec<String> = self.members.iter().map(|m| m.endpoint.clone()).collect();
        let t = match &self.placement {
            PlacementFile::Hash { slots } => match &self.owners {
                Some(o) => RouteTable { epoch: self.epoch, placement: Placement::Hash, members, owners: o.clone() },
                None => RouteTable::hashed(self.epoch, members, *slots)?,
            },
            PlacementFile::Ceph { object_size, .. } => {
                let (osdmap_epoch, primaries) = ceph.unwrap_or((0, &[]));
                let owner_of = |osd: i32| self.members.iter().position(|m| m.osds.contains(&osd)).map_or(NO_OWNER, |i| i as u8);
                let owners = if primaries.is_empty() { vec![NO_OWNER] } else { primaries.iter().map(|&o| owner_of(o)).collect() };
                RouteTable {
                    epoch: self.epoch.saturating_add(osdmap_epoch),
                    placement: Placement::Ceph { object_size: *object_size },
                    members,
                    owners,
                }
            }
        };
        t.validate()?;
        Ok(t)
    }
}

/// A published table with its encoding (the redirect payload).
#[derive(Debug)]
struct Published {
    table: RouteTable,
    encoded: Vec<u8>,
}

/// This proxy's cluster state. See the module docs.
#[derive(Debug)]
pub struct Cluster {
    path: PathBuf,
    me: usize,
    file: RwLock<(ClusterFile, Option<SystemTime>)>,
    epoch: AtomicU32,
    table: RwLock<Arc<Published>>,
    /// Requests served whose slot this proxy owns (or nobody owns).
    pub served_own: AtomicU64,
    /// Requests served whose slot another member owns (routed here on purpose).
    pub served_other: AtomicU64,
    /// Data bytes (request payloads and bytes asked for by reads) of `served_other`:
    /// what a gateway that forwards to the owner would move between proxies.
    pub other_bytes: AtomicU64,
    /// Requests answered with a redirect.
    pub redirected: AtomicU64,
    /// The file's `redirects` setting.
    redirects: std::sync::atomic::AtomicBool,
    /// Ceph placement: last OSD map epoch read and the PG primaries.
    osdmap: RwLock<Option<(u32, Vec<i32>)>>,
}

impl Cluster {
    /// Loads the cluster file for member `me` (see [`ClusterFile::load`]).
    pub fn load(path: &Path, me: usize) -> anyhow::Result<Arc<Cluster>> {
        let f = ClusterFile::load(path, me)?;
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let table = f.table(None)?;
        let redirects = f.redirects;
        log::info!(
            "cluster member {me} ({}) of {} member(s), {} placement, route epoch {}",
            f.members[me].endpoint,
            f.members.len(),
            match f.placement {
                PlacementFile::Hash { .. } => "hash",
                PlacementFile::Ceph { .. } => "ceph",
            },
            table.epoch
        );
        let c = Cluster {
            path: path.to_path_buf(),
            me,
            file: RwLock::new((f, mtime)),
            epoch: AtomicU32::new(table.epoch),
            table: RwLock::new(Arc::new(Published { encoded: table.encode(), table })),
            served_own: AtomicU64::new(0),
            served_other: AtomicU64::new(0),
            other_bytes: AtomicU64::new(0),
            redirected: AtomicU64::new(0),
            redirects: std::sync::atomic::AtomicBool::new(redirects),
            osdmap: RwLock::new(None),
        };
        Ok(Arc::new(c))
    }

    /// One line of counters, for the log at shutdown.
    pub fn summary(&self) -> String {
        format!(
            "cluster member {}: route epoch {}, served {} request(s) of its own slots and {} of other members' slots \
             ({} data bytes), redirected {}",
            self.me,
            self.epoch.load(Ordering::Acquire),
            self.served_own.load(Ordering::Relaxed),
            self.served_other.load(Ordering::Relaxed),
            self.other_bytes.load(Ordering::Relaxed),
            self.redirected.load(Ordering::Relaxed)
        )
    }

    /// This member's index.
    pub fn me(&self) -> usize {
        self.me
    }

    /// The table in force.
    pub fn table(&self) -> RouteTable {
        self.table.read().unwrap_or_else(|e| e.into_inner()).table.clone()
    }

    /// The Ceph pool of Ceph placement (`None` for hash placement).
    pub fn ceph_pool(&self) -> Option<String> {
        match &self.file.read().unwrap_or_else(|e| e.into_inner()).0.placement {
            PlacementFile::Ceph { pool, .. } => Some(pool.clone()),
            PlacementFile::Hash { .. } => None,
        }
    }

    fn publish(&self, table: RouteTable) {
        let old = self.epoch.load(Ordering::Acquire);
        if table == self.table.read().unwrap_or_else(|e| e.into_inner()).table {
            return;
        }
        log::info!("route table: epoch {old} -> {} ({} slots)", table.epoch, table.slots());
        let epoch = table.epoch;
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Published { encoded: table.encode(), table });
        self.epoch.store(epoch, Ordering::Release);
    }

    fn rebuild(&self) {
        let file = self.file.read().unwrap_or_else(|e| e.into_inner()).0.clone();
        let osd = self.osdmap.read().unwrap_or_else(|e| e.into_inner()).clone();
        match file.table(osd.as_ref().map(|(e, p)| (*e, p.as_slice()))) {
            Ok(t) => self.publish(t),
            Err(e) => log::warn!("route table not changed: {e}"),
        }
    }

    /// Re-reads the cluster file if it changed since it was read; a file that no
    /// longer loads is reported and the table in force stays.
    pub fn reload_if_changed(&self) {
        let mtime = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if mtime == self.file.read().unwrap_or_else(|e| e.into_inner()).1 {
            return;
        }
        match ClusterFile::load(&self.path, self.me) {
            Ok(f) => {
                self.redirects.store(f.redirects, Ordering::Relaxed);
                *self.file.write().unwrap_or_else(|e| e.into_inner()) = (f, mtime);
                self.rebuild();
            }
            Err(e) => {
                log::warn!("{e:#}; keeping route epoch {}", self.epoch.load(Ordering::Acquire));
                self.file.write().unwrap_or_else(|e| e.into_inner()).1 = mtime;
            }
        }
    }

    /// Route controller step for Ceph placement: `mon` runs a monitor command and
    /// returns its JSON output. Reads the OSD map's epoch and the pool's `pg_num`; when
    /// the epoch changed, the primary OSD of every PG (`pg map`), and republishes.
    ///
    /// Errors: a command failed or its output is not what Ceph prints.
    pub fn refresh_ceph(&self, mon: &dyn Fn(&str) -> Result<Vec<u8>, String>) -> Result<(), String> {
        let Some(pool) = self.ceph_pool() else { return Ok(()) };
        let dump: serde_json::Value =
            serde_json::from_slice(&mon(r#"{"prefix":"osd dump","format":"json"}"#)?).map_err(|e| format!("osd dump: {e}"))?;
        let epoch = dump["epoch"].as_u64().ok_or("osd dump: no epoch")? as u32;
        if self.osdmap.read().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|(e, _)| *e == epoch) {
            return Ok(());
        }
        let p = dump["pools"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["pool_name"] == pool.as_str()))
            .ok_or_else(|| format!("osd dump: no pool {pool:?}"))?;
        let (id, pg_num) = (p["pool"].as_u64().ok_or("osd dump: pool id")?, p["pg_num"].as_u64().ok_or("osd dump: pg_num")?);
        if pg_num == 0 || pg_num > u64::from(pov_proto::route::MAX_SLOTS) {
            return Err(format!("pool {pool:?} has {pg_num} PGs: 1-{} are supported", pov_proto::route::MAX_SLOTS));
        }
        let mut primaries = Vec::with_capacity(pg_num as usize);
        for seed in 0..pg_num {
            let cmd = format!(r#"{{"prefix":"pg map","pgid":"{id}.{seed:x}","format":"json"}}"#);
            let m: serde_json::Value = serde_json::from_slice(&mon(&cmd)?).map_err(|e| format!("pg map {id}.{seed:x}: {e}"))?;
            let primary = m["acting_primary"]
                .as_i64()
                .or_else(|| m["acting"].as_array().and_then(|a| a.first()).and_then(|v| v.as_i64()))
                .unwrap_or(-1);
            primaries.push(primary as i32);
        }
        *self.osdmap.write().unwrap_or_else(|e| e.into_inner()) = Some((epoch, primaries));
        self.rebuild();
        Ok(())
    }

    /// Checks a frame body before it runs. `Some(frame)`: the complete
    /// [`Status::Redirect`] response to send instead of running it; `None`: run it
    /// (counted as own or other). Frames that do not decode, pings and volume-less
    /// admin traffic are left to the normal path.
    pub fn check(&self, body: &[u8]) -> Option<Vec<u8>> {
        let r = ProxyRequest::decode(body).ok()?;
        let req = &r.req;
        // Not placed by slot: any member serves them (a flush or fsync covers what
        // this proxy wrote; a volume open is the device's first call).
        if matches!(req.op, Op::Ping | Op::VolumeOpen | Op::VolumeFlush | Op::Fsync | Op::Close) {
            return None;
        }
        let input = if req.op.is_volume() {
            RouteInput::Volume { name: &req.tenant, offset: req.offset }
        } else {
            RouteInput::File { tenant: &req.tenant, path: &req.path, location: req.hint.location_key, offset: req.offset }
        };
        let p = self.table.read().unwrap_or_else(|e| e.into_inner()).clone();
        let owner = p.table.owner(p.table.slot(input));
        if owner.map_or(true, |o| o == self.me) {
            self.served_own.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if req.epoch >= p.table.epoch || !self.redirects.load(Ordering::Relaxed) {
            self.served_other.fetch_add(1, Ordering::Relaxed);
            let bytes =
                r.payload.len() as u64 + if matches!(req.op, Op::Read | Op::VolumeRead) { u64::from(req.length) } else { 0 };
            self.other_bytes.fetch_add(bytes, Ordering::Relaxed);
            return None;
        }
        self.redirected.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::new();
        ProxyResponse { op: req.op as u16, tag: req.tag, status: Status::Redirect, result: 0, flags: 0 }
            .encode_frame(&p.encoded, &mut out);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("cluster.json");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn frame(req: &ProxyRequest) -> Vec<u8> {
        let mut f = Vec::new();
        req.encode_frame(&[], &mut f).unwrap();
        f[4..].to_vec()
    }

    #[test]
    fn stale_requests_for_other_slots_are_redirected_current_ones_served() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            r#"{"epoch": 5, "placement": {"kind": "hash", "slots": 16},
                "members": [{"endpoint": "tcp:127.0.0.1:1"}, {"endpoint": "tcp:127.0.0.1:2"}]}"#,
        );
        let c = Cluster::load(&p, 0).unwrap();
        let t = c.table();
        // A path owned by member 1.
        let path = (0..100)
            .map(|i| format!("f{i}"))
            .find(|f| t.owner(t.slot(RouteInput::File { tenant: "t", path: f, location: 0, offset: 0 })) == Some(1))
            .unwrap();
        let mut req = ProxyRequest::new(Op::Stat, "t", &path);
        let answer = c.check(&frame(&req)).expect("epoch 0 is stale: redirect");
        let (resp, payload) = ProxyResponse::decode(&answer[4..]).unwrap();
        assert_eq!(resp.status, Status::Redirect);
        assert_eq!(RouteTable::decode(payload).unwrap(), t);
        req.epoch = 5;
        assert!(c.check(&frame(&req)).is_none(), "current epoch: served even if not ours (the owner may be down)");
        assert_eq!(c.served_other.load(Ordering::Relaxed), 1);
        assert_eq!(c.redirected.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn bad_files_are_refused_and_a_changed_file_is_reloaded() {
        let d = tempfile::tempdir().unwrap();
        let two = r#"{"epoch": 1, "placement": {"kind": "hash"}, "members": [{"endpoint": "a"}, {"endpoint": "b"}]}"#;
        let p = write(d.path(), two);
        assert!(Cluster::load(&p, 2).is_err(), "not a member");
        let c = Cluster::load(&p, 1).unwrap();
        assert_eq!(c.table().slots(), DEFAULT_SLOTS);
        write(d.path(), r#"{"epoch": 2, "placement": {"kind": "hash"}, "members": [{"endpoint": "a"}], "owners": [0, 5]}"#);
        // mtime granularity: force a different one.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options().write(true).open(&p).unwrap().set_modified(later).unwrap();
        c.reload_if_changed();
        assert_eq!(c.table().epoch, 1, "an invalid file keeps the table (owner 5 of 1 member, and member 1 gone)");
        write(
            d.path(),
            r#"{"epoch": 3, "placement": {"kind": "hash", "slots": 4}, "members": [{"endpoint": "a"}, {"endpoint": "b"}], "owners": [1, 1, 1, 0]}"#,
        );
        std::fs::File::options().write(true).open(&p).unwrap().set_modified(later + Duration::from_secs(5)).unwrap();
        c.reload_if_changed();
        assert_eq!(c.table().epoch, 3);
        assert_eq!(c.table().owners, vec![1, 1, 1, 0]);
    }

    #[test]
    fn ceph_placement_follows_the_osd_map() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            r#"{"epoch": 1, "placement": {"kind": "ceph", "pool": "pov-data"},
                "members": [{"endpoint": "a", "osds": [0]}, {"endpoint": "b", "osds": [1, 2]}]}"#,
        );
        let c = Cluster::load(&p, 0).unwrap();
        let osdmap_epoch = std::cell::Cell::new(20);
        let mon = |cmd: &str| -> Result<Vec<u8>, String> {
            if cmd.contains("osd dump") {
                let e = osdmap_epoch.get();
                return Ok(format!(r#"{{"epoch":{e},"pools":[{{"pool":3,"pool_name":"pov-data","pg_num":4}}]}}"#).into_bytes());
            }
            // PG 3.s has primary osd s (3.3: osd 7, co-located with nobody).
            let seed = cmd.split("\"3.").nth(1).and_then(|s| s.chars().next()).unwrap();
            let osd = if seed == '3' { 7 } else { seed.to_digit(16).unwrap() };
            Ok(format!(r#"{{"epoch":20,"pgid":"3.{seed}","up":[{osd}],"acting":[{osd}],"acting_primary":{osd}}}"#).into_bytes())
        };
        c.refresh_ceph(&mon).unwrap();
        let t = c.table();
        assert_eq!(t.epoch, 21, "file epoch + OSD map epoch");
        assert_eq!(t.owners, vec![0, 1, 1, NO_OWNER]);
        osdmap_epoch.set(25);
        c.refresh_ceph(&mon).unwrap();
        assert_eq!(c.table().epoch, 26);
        assert!(c.refresh_ceph(&|_: &str| Ok(b"not json".to_vec())).is_err());
    }
}
