//! An opened PoV device: validated configuration space plus the admin channel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use pov_proto::admin::{
    AdminOp, AdminRequest, AdminResponse, ADMIN_MAC_OFFSET, ADMIN_REQUEST_SIZE, ADMIN_RESPONSE_SIZE, SESSION_MAILBOX,
};
use pov_proto::crypto::{self, SessionKeys};
use pov_proto::layout::{features, mailbox_offset, ConfigSpace, Geometry, ADMIN_MAILBOXES, ADMIN_REQ_OFFSET, CONFIG_SIZE};

use crate::error::{Error, ErrorKind, Result};
use crate::kernel::KernelTransport;
use crate::spec::{DeviceOptions, DeviceSpec};
use crate::transport::{BlockOp, BlockTransport, Lane};
use crate::vhost::VhostUserTransport;

/// An open PoV device. Cheap to clone (all clones share one transport); `Send + Sync`.
///
/// Opening reads and validates the configuration space, so a `Device` always speaks to
/// a PoV device whose protocol version and layout this driver understands.
#[derive(Clone)]
pub struct Device {
    inner: Arc<DeviceInner>,
}

struct DeviceInner {
    /// Replaced by [`Device::reconnect`] (a `pov-dpud` restart).
    transport: RwLock<Arc<dyn BlockTransport>>,
    config: ConfigSpace,
    /// How to open the transport again; `None` for one given by the caller.
    reopen: Option<(DeviceSpec, DeviceOptions)>,
    /// Held while reconnecting (sessions sharing the device reconnect it once).
    reconnecting: std::sync::Mutex<()>,
    /// Requests read their response from the response window, submitted with their
    /// WRITE ([`DeviceOptions::joint_round_trip`] and the device's feature; updated on
    /// reconnect, the device may have been upgraded or downgraded).
    joint: AtomicBool,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("device", &self.describe()).field("config", &self.inner.config).finish()
    }
}

/// Reads the configuration space through `transport` and validates it: magic, protocol
/// version, fixed layout constants, geometry limits, and a capacity large enough for
/// the geometry.
///
/// Errors: [`ErrorKind::Access`] if the read fails, [`ErrorKind::NotPovDevice`] if the
/// record does not validate.
pub fn read_config(transport: &dyn BlockTransport) -> Result<ConfigSpace> {
    let what = transport.describe();
    let access = |e: std::io::Error| Error::new(ErrorKind::Access, format!("read configuration space of {what}")).with_source(e);
    if transport.capacity() < CONFIG_SIZE {
        return Err(Error::new(
            ErrorKind::NotPovDevice,
            format!("{what}: {} bytes is too small to hold a PoV configuration space", transport.capacity()),
        ));
    }
    let mut buf = transport.alloc_buf(CONFIG_SIZE as usize).map_err(access)?;
    transport.submit(Lane::Admin, &mut [BlockOp::read(0, &mut buf, CONFIG_SIZE as usize)]).map_err(access)?;
    let config = ConfigSpace::decode(&buf[..CONFIG_SIZE as usize])
        .map_err(|e| Error::new(ErrorKind::NotPovDevice, what.clone()).with_source(e))?;
    let need = config.needed_capacity();
    if transport.capacity() < need {
        return Err(Error::new(
            ErrorKind::NotPovDevice,
            format!(
                "{what}: capacity {} bytes is smaller than its geometry needs ({need} bytes for {} areas x {} queues)",
                transport.capacity(),
                config.geometry.areas,
                config.geometry.queues_per_area
            ),
        ));
    }
    Ok(config)
}

impl Device {
    /// Opens the device named by `spec` (`/dev/vdX` or `vhost-user:SOCKET`, see
    /// [`DeviceSpec`]) with default [`DeviceOptions`].
    ///
    /// Errors: [`ErrorKind::BadSpec`], [`ErrorKind::Access`] (open or connect failed),
    /// [`ErrorKind::NotPovDevice`].
    pub fn open(spec: &str) -> Result<Device> {
        Device::open_with(&spec.parse()?, &DeviceOptions::default())
    }

    /// Opens the device named by `spec` with explicit transport options.
    ///
    /// Errors: as [`Device::open`].
    pub fn open_with(spec: &DeviceSpec, opts: &DeviceOptions) -> Result<Device> {
        let transport = open_transport(spec, opts)?;
        let mut d = Device::from_transport(transport)?;
        let inner = Arc::get_mut(&mut d.inner).expect("not shared yet");
        inner.reopen = Some((spec.clone(), opts.clone()));
        *inner.joint.get_mut() &= opts.joint_round_trip;
        Ok(d)
    }

    /// Wraps an already opened transport (e.g. a custom one) and validates its
    /// configuration space.
    ///
    /// Errors: as [`read_config`].
    pub fn from_transport(transport: Box<dyn BlockTransport>) -> Result<Device> {
        let config = read_config(transport.as_ref())?;
        log::debug!("{}: PoV device {:?}, {:?}", transport.describe(), config.name, config.geometry);
        let transport: Arc<dyn BlockTransport> = Arc::from(transport);
        let joint = AtomicBool::new(config.has(features::RESPONSE_WINDOWS));
        Ok(Device {
            inner: Arc::new(DeviceInner {
                transport: RwLock::new(transport),
                config,
                reopen: None,
                reconnecting: std::sync::Mutex::new(()),
                joint,
            }),
        })
    }

    /// Connects again after the device went away (a `pov-dpud` restart: its vhost-user
    /// socket comes back): abandons the current transport (IO stuck on it fails, see
    /// [`BlockTransport::abandon`]), then opens the device by its spec again, retrying
    /// every 100 ms until `deadline`, and checks it is the same device (name and
    /// geometry). Every clone of this `Device` uses the new connection from then on;
    /// buffers from the old one must not be used with it.
    ///
    /// Errors: [`ErrorKind::Access`] if it cannot be reached by `deadline` (with the
    /// last error), [`ErrorKind::NotPovDevice`] if another device answers, and
    /// [`ErrorKind::InvalidArgument`] for a device made with [`Device::from_transport`]
    /// (nothing to reopen it from).
    pub fn reconnect(&self, deadline: Instant) -> Result<()> {
        let Some((spec, opts)) = &self.inner.reopen else {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{}: opened from a transport: cannot reconnect", self.describe()),
            ));
        };
        self.transport().abandon();
        let mut last;
        loop {
            match open_transport(spec, opts).and_then(|t| read_config(t.as_ref()).map(|c| (t, c))) {
                Ok((t, c)) => {
                    if c.name != self.inner.config.name || c.geometry != self.inner.config.geometry {
                        return Err(Error::new(
                            ErrorKind::NotPovDevice,
                            format!(
                                "{spec}: after reconnecting, device {:?} {:?} answers instead of {:?} {:?}",
                                c.name, c.geometry, self.inner.config.name, self.inner.config.geometry
                            ),
                        ));
                    }
                    let joint = opts.joint_round_trip && c.has(features::RESPONSE_WINDOWS);
                    self.inner.joint.store(joint, Ordering::Relaxed);
                    *self.inner.transport.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(t);
                    log::info!("{spec}: reconnected");
                    return Ok(());
                }
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                return Err(last.recontext(format!("reconnect to {spec}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// [`Device::reconnect`] if the connection in use is still `failed` (another user
    /// of this device may have reconnected already: then nothing is done).
    ///
    /// Errors: as [`Device::reconnect`].
    pub(crate) fn reconnect_from(&self, failed: &Arc<dyn BlockTransport>, deadline: Instant) -> Result<()> {
        let _one = self.inner.reconnecting.lock().unwrap_or_else(|e| e.into_inner());
        // Compare the data pointers only (vtable pointers of one type may differ).
        if Arc::as_ptr(&self.transport()) as *const () != Arc::as_ptr(failed) as *const () {
            return Ok(());
        }
        self.reconnect(deadline)
    }

    /// The validated configuration record.
    pub fn config(&self) -> &ConfigSpace {
        &self.inner.config
    }

    /// `true` if requests submit their WRITE and response READ together and read the
    /// response window ([`DeviceOptions::joint_round_trip`]).
    pub fn joint_round_trip(&self) -> bool {
        self.inner.joint.load(Ordering::Relaxed)
    }

    /// The device geometry (IO areas and queues per area).
    pub fn geometry(&self) -> Geometry {
        self.inner.config.geometry
    }

    /// The device name from the configuration space.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// The device as named by its spec, e.g. `/dev/vdb`.
    pub fn describe(&self) -> String {
        self.transport().describe()
    }

    /// Device round trips this connection has waited for ([`BlockTransport::round_trips`]:
    /// one per request with [`Device::joint_round_trip`], two without, two per admin
    /// exchange). Counts from 0 again after [`Device::reconnect`].
    pub fn round_trips(&self) -> u64 {
        self.transport().round_trips()
    }

    /// Device capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.transport().capacity()
    }

    /// The connection in use now (see [`Device::reconnect`]).
    pub(crate) fn transport(&self) -> Arc<dyn BlockTransport> {
        self.inner.transport.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs one admin exchange and returns the device's answer, whatever its status.
    ///
    /// The request names a random shared mailbox and carries a fresh one-time exchange
    /// key (`pov_proto::admin`). With `session` = (its keys, its IO area), an
    /// in-session request is MACed with the session's admin key and its answer read
    /// from the session's own mailbox (the named one if the device did not take it as
    /// the session's). A shared mailbox held for another exchange makes the device fail
    /// the WRITE: another is tried (up to [`ADMIN_ATTEMPTS`] in all, backing off for
    /// about 1 s in all). No lock between processes: they cannot read or disturb each
    /// other's exchanges. One session's in-session exchanges must not overlap (they
    /// share its mailbox): `Session` runs them one at a time.
    ///
    /// Errors: [`ErrorKind::InvalidArgument`] (tenant or prefix too long),
    /// [`ErrorKind::Access`] (IO failed, or every mailbox tried was busy),
    /// [`ErrorKind::Protocol`] (an answer that does not open with our key),
    /// [`ErrorKind::AdminMismatch`] (the answer is to another request).
    pub fn admin_raw(&self, mut req: AdminRequest, session: Option<(&SessionKeys, u32)>) -> Result<AdminResponse> {
        let ctx = || format!("admin {:?} on {}", req.op, self.describe());
        let t = self.transport();
        let access = |e: std::io::Error| Error::new(ErrorKind::Access, ctx()).with_source(e);
        let mut buf = t.alloc_buf(ADMIN_REQUEST_SIZE).map_err(access)?;
        let mut answer = t.alloc_buf(ADMIN_RESPONSE_SIZE).map_err(access)?;
        let joint = self.joint_round_trip();
        let mut last = None;
        for attempt in 0..ADMIN_ATTEMPTS {
            if attempt >= ADMIN_QUICK_ATTEMPTS {
                // Back off (5, 10, ... 40 ms; about 1 s over every attempt): mailboxes
                // held by a flood of other requests free up after MAILBOX_HOLD_MS.
                let n = attempt + 1 - ADMIN_QUICK_ATTEMPTS;
                std::thread::sleep(std::time::Duration::from_millis(5 * n.min(8) as u64));
            }
            req.mailbox = u16::from_le_bytes(crypto::random()) % ADMIN_MAILBOXES;
            req.exchange_key = crypto::random();
            let mut bytes = req.encode().map_err(|e| Error::new(ErrorKind::InvalidArgument, ctx()).with_source(e))?;
            if let Some((k, _)) = session {
                k.mac_admin(&mut bytes, ADMIN_MAC_OFFSET);
            }
            buf[..ADMIN_REQUEST_SIZE].copy_from_slice(&bytes);
            // The session's authentic request is answered in its session mailbox; one the
            // device did not take as the session's (the session is gone, say) in the
            // shared mailbox it names.
            let (at, mailbox) = match session {
                Some((_, area)) => (self.geometry().session_mailbox(area), SESSION_MAILBOX),
                None => (mailbox_offset(req.mailbox), req.mailbox),
            };
            // The device executes the request before completing the WRITE. The READ of
            // the answer goes with it: in order on libblkio (one batch, one round trip),
            // with one io_uring submission on /dev/vdX, where it may reach the device
            // first and then finds an older answer: it is read again below. A failed
            // WRITE (a held mailbox) is retried on another mailbox.
            let mut ops = [
                BlockOp::write(ADMIN_REQ_OFFSET, &mut buf, ADMIN_REQUEST_SIZE),
                BlockOp::read(at, &mut answer, ADMIN_RESPONSE_SIZE),
            ];
            let sent = if joint { t.submit_joint(Lane::Admin, &mut ops) } else { t.submit(Lane::Admin, &mut ops) };
            if let Err(e) = sent {
                last = Some(e);
                continue;
            }
            let opened = |b: &crate::IoBuf, m: u16| AdminResponse::open(&b[..ADMIN_RESPONSE_SIZE], m, &req.exchange_key);
            let mut got = opened(&answer, mailbox);
            if got.is_err() && joint {
                t.submit(Lane::Admin, &mut [BlockOp::read(at, &mut answer, ADMIN_RESPONSE_SIZE)]).map_err(access)?;
                got = opened(&answer, mailbox);
            }
            if session.is_some() {
                if let Ok(resp) = got {
                    return check_echo(resp, &req, ctx);
                }
                let at = mailbox_offset(req.mailbox);
                t.submit(Lane::Admin, &mut [BlockOp::read(at, &mut answer, ADMIN_RESPONSE_SIZE)]).map_err(access)?;
                got = opened(&answer, req.mailbox);
            }
            let resp = match got {
                Ok(r) => r,
                // A Hello's answer is unprotected: another session's authentic request
                // may take its mailbox before we read it. A Hello is repeated freely.
                Err(e) if req.op == AdminOp::Hello => {
                    last = Some(std::io::Error::other(e.to_string()));
                    continue;
                }
                Err(e) => return Err(Error::new(ErrorKind::Protocol, ctx()).with_source(e)),
            };
            return check_echo(resp, &req, ctx);
        }
        let e = last.unwrap_or_else(|| std::io::Error::other("no mailbox tried"));
        Err(Error::new(ErrorKind::Access, format!("{}: {ADMIN_ATTEMPTS} mailboxes refused", ctx())).with_source(e))
    }

    /// Like [`Device::admin_raw`], but a non-Ok status is an [`ErrorKind::Admin`] error.
    pub fn admin(&self, req: AdminRequest, session: Option<(&SessionKeys, u32)>) -> Result<AdminResponse> {
        let op = req.op;
        let resp = self.admin_raw(req, session)?;
        let status = resp.status();
        if !status.is_ok() {
            return Err(Error::new(ErrorKind::Admin(status), format!("admin {op:?} on {}", self.describe())));
        }
        Ok(resp)
    }
}

/// `resp` if it answers `req` (sequence number and operation echoed).
fn check_echo(resp: AdminResponse, req: &AdminRequest, ctx: impl Fn() -> String) -> Result<AdminResponse> {
    if resp.seq != req.seq || resp.op != req.op as u16 {
        return Err(Error::new(
            ErrorKind::AdminMismatch,
            format!("{}: sent request {}, got the answer to {} (op {})", ctx(), req.seq, resp.seq, resp.op),
        ));
    }
    Ok(resp)
}

/// Opens the transport `spec` names.
fn open_transport(spec: &DeviceSpec, opts: &DeviceOptions) -> Result<Box<dyn BlockTransport>> {
    Ok(match spec {
        DeviceSpec::Kernel(p) => Box::new(
            KernelTransport::open(p).map_err(|e| Error::new(ErrorKind::Access, format!("open device {spec}")).with_source(e))?,
        ),
        DeviceSpec::VhostUser(p) => Box::new(
            VhostUserTransport::connect(p, opts.blkio_queues.max(1), opts.io_timeout)
                .map_err(|e| Error::new(ErrorKind::Access, format!("connect to {spec}")).with_source(e))?,
        ),
    })
}

/// Mailboxes one admin exchange tries before giving up (a mailbox is refused while it
/// holds another exchange's fresh answer).
pub const ADMIN_ATTEMPTS: usize = 32;

/// Attempts of an admin exchange made at once, each naming another random mailbox,
/// before backing off: a refused WRITE costs one device round trip, and with sessions
/// opening in a tight loop a good share of the 256 mailboxes is held at any moment (a
/// 5 ms sleep per refusal made session opens bimodal, 1 ms or 6 ms).
const ADMIN_QUICK_ATTEMPTS: usize = 4;

/// An admin request of `op` from this process with every other field empty.
pub(crate) fn admin_request(op: AdminOp) -> AdminRequest {
    AdminRequest::new(op, std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Chain;
    use pov_proto::layout::{ConfigSpace, Geometry};
    use std::os::unix::fs::FileExt;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn public_handles_are_send_and_sync() {
        assert_send_sync::<Device>();
        assert_send_sync::<crate::Session>();
        assert_send_sync::<crate::File>();
        assert_send_sync::<crate::IoBuf>();
    }

    #[test]
    fn bad_specs_are_rejected_before_any_io() {
        assert_eq!(Device::open("").unwrap_err().kind(), &ErrorKind::BadSpec);
        assert_eq!(Device::open("nvme:x").unwrap_err().kind(), &ErrorKind::BadSpec);
        let e = Device::open("/nonexistent/pov-dev").unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Access);
        assert!(e.to_string().contains("/nonexistent/pov-dev"), "{e}");
    }

    /// The kernel path on image files (when the file system supports O_DIRECT): only a
    /// valid configuration record on a large enough device opens.
    #[test]
    fn kernel_path_validates_images() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(2 << 20).unwrap();
        let e = match Device::open(img.to_str().unwrap()) {
            Err(e) if e.kind() == &ErrorKind::Access => return, // no O_DIRECT here
            other => other.unwrap_err(),
        };
        assert_eq!(e.kind(), &ErrorKind::NotPovDevice, "{e}");
        assert!(Chain(&e).to_string().contains("bad magic"), "{e}");

        let g = Geometry::new(2, 2).unwrap();
        let windows = ConfigSpace { geometry: g, name: "img0".into(), features: features::RESPONSE_WINDOWS };
        f.write_all_at(&windows.encode(), 0).unwrap();
        let e = Device::open(img.to_str().unwrap()).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::NotPovDevice);
        assert!(e.to_string().contains("smaller than its geometry"), "{e}");

        // A device without response windows (an older pov-dpud) needs no room for
        // them, and requests then take the READ-after-WRITE path.
        f.set_len(g.window_base()).unwrap();
        f.write_all_at(&ConfigSpace { features: 0, ..windows.clone() }.encode(), 0).unwrap();
        let dev = Device::open(img.to_str().unwrap()).unwrap();
        assert!(!dev.joint_round_trip());
        f.write_all_at(&windows.encode(), 0).unwrap();
        assert!(Device::open(img.to_str().unwrap()).is_err(), "windows advertised but not in the capacity");

        f.set_len(g.capacity_bytes()).unwrap();
        let dev = Device::open(img.to_str().unwrap()).unwrap();
        assert!(dev.joint_round_trip());
        let serial = DeviceOptions { joint_round_trip: false, ..DeviceOptions::default() };
        assert!(!Device::open_with(&img.to_str().unwrap().parse().unwrap(), &serial).unwrap().joint_round_trip());
        assert_eq!(dev.name(), "img0");
        assert_eq!(dev.geometry(), g);
        // A plain file does not execute admin requests: the mailbox holds no answer.
        let e = dev.admin(admin_request(AdminOp::Heartbeat), None).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Protocol, "{e}");
    }
}
