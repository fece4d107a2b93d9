//! The `pov-host` command-line tool: list PoV devices, and copy, list, print, stat and
//! remove files through a PoV session. `main.rs` only calls [`main`].
//!
//! Files inside PoV are written `pov:/path`; anything else is a local path. The secret
//! is read from `--secret-file FILE` (or `POV_SECRET_FILE`; `-` is standard input) or
//! `POV_SECRET`, never from the command line (where other users could read it in `ps`),
//! and is wiped from memory (`zeroize`) once the session is open.

use std::fs;
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use clap::{ArgAction, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use zeroize::Zeroizing;

use crate::discover;
use crate::engine::join;
use crate::{Device, DeviceOptions, DeviceSpec, Kind, OpenOptions, Protection, Session, SessionOptions};

/// Prefix that marks a path inside PoV.
pub const POV_PREFIX: &str = "pov:";

/// Copies of at least this many bytes show a progress bar (on a terminal).
const PROGRESS_MIN_BYTES: u64 = 32 << 20;

/// Bytes per copy chunk: one PoV request.
const CHUNK: usize = pov_proto::MAX_IO_BYTES as usize;

const EXAMPLES: &str = "\
Environment:
  POV_DEVICE   device, as --device
  POV_TENANT   tenant, as --tenant
  POV_SECRET_FILE  file holding the tenant's secret, as --secret-file
  POV_SECRET   the tenant's secret (prefer a file; never given as an argument)
  RUST_LOG     log filter (e.g. debug), overrides -v

Examples:
  pov-host list
  export POV_DEVICE=/dev/vdb POV_TENANT=acme POV_SECRET_FILE=~/.pov-secret
  pov-host cp -r ./photos pov:/photos      copy a tree into PoV
  pov-host cp pov:/photos/a.jpg .          copy a file out
  pov-host ls pov:/photos
  pov-host cat pov:/notes.txt
  pov-host --device vhost-user:/run/pov/pov0.sock --secret-file ~/.pov-secret stat pov:/notes.txt
  pov-host rm -r pov:/photos";

/// Command line of `pov-host`.
#[derive(Debug, Parser)]
#[command(
    name = "pov-host",
    version,
    about = "Use PoV storage through a PoV device (virtio-blk): copy, list, print and remove files",
    long_about = "Use PoV storage through a PoV device.\n\n\
        A PoV device is a virtio-blk device that carries file RPCs to PoV storage: a kernel \
        block device such as /dev/vdb, or a vhost-user-blk socket reached with libblkio \
        (vhost-user:SOCKET). Paths inside PoV are written pov:/path and live in the tenant's \
        namespace; every other path is local.",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// PoV device: /dev/vdX (kernel virtio-blk) or vhost-user:SOCKET (libblkio)
    #[arg(short, long, env = "POV_DEVICE", global = true, value_name = "DEV")]
    pub device: Option<String>,

    /// Tenant to open the session as
    #[arg(short, long, env = "POV_TENANT", global = true, help_heading = SESSION_OPTIONS, value_name = "NAME")]
    pub tenant: Option<String>,

    /// Read the tenant secret from FILE (one trailing newline is dropped; `-` reads
    /// standard input); without it the secret comes from the POV_SECRET environment
    /// variable
    #[arg(long, env = "POV_SECRET_FILE", global = true, help_heading = SESSION_OPTIONS, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,

    /// IO queues of the session: requests in flight at once (1-64)
    #[arg(short, long, global = true, help_heading = SESSION_OPTIONS, default_value_t = 4, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub queues: u32,

    /// Open a read-only session: the DPU and the proxy refuse anything that would
    /// create, write, truncate or remove
    #[arg(long, global = true, help_heading = SESSION_OPTIONS)]
    pub read_only: bool,

    /// Limit the session to this PoV directory and what lies below it (pov:/dir or
    /// /dir); paths stay relative to the tenant's root
    #[arg(long, global = true, help_heading = SESSION_OPTIONS, value_name = "PATH")]
    pub prefix: Option<String>,

    /// Authenticate responses but do not encrypt their payloads (cheaper; any process
    /// that can open the device can read them: for processes that trust each other)
    #[arg(long, global = true, help_heading = SESSION_OPTIONS)]
    pub integrity_only: bool,

    /// Print, for every request, where its time went (host↔DPU, DPU queue, network,
    /// proxy queue, backend) as one `trace:` line on standard error
    #[arg(long, global = true, help_heading = SESSION_OPTIONS)]
    pub trace: bool,

    /// More log output (-v info, -vv debug)
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Help heading of the options that shape the session (every command but `list`,
/// which opens none).
const SESSION_OPTIONS: &str = "Session options (all commands but list)";

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List PoV devices on this host: virtio-blk disks whose serial starts with "pov-"
    /// (/sys/block/vd*/serial), with capacity and whether the configuration space
    /// validates. With --device vhost-user:SOCKET, probe that device too. Exits 1 when
    /// none is found or one does not validate.
    List {
        /// Print one JSON array (objects with device, serial, capacity_bytes, config)
        #[arg(long)]
        json: bool,
    },
    /// Copy files and directory trees into, out of, or within PoV
    #[command(after_help = "Either SRC or DST (or both) is pov:/path. If DST is an existing \
        directory or ends with '/', SRC is copied into it under its own name; otherwise SRC is \
        copied to DST. Directories need -r. Like cp(1): existing destination files are \
        overwritten unless -n or -i says otherwise; SRC itself is followed if it is a symbolic \
        link, but links inside a tree are skipped with a warning (PoV has no symbolic links) \
        unless -L copies what they point to (a link back into the tree is skipped). Each file \
        is written under a temporary name in its destination directory (.NAME.pov-part-*), \
        made durable, and renamed into place in one step: an interrupted copy never leaves a \
        partial file under the real name (only, at worst, a .pov-part file to remove), and an \
        overwritten file is the old one or the new one, never a mix. Prints a summary: files, \
        bytes, MiB/s, and what was skipped.")]
    Cp {
        /// Copy directories recursively
        #[arg(short, long)]
        recursive: bool,
        /// Follow symbolic links inside local trees (copy what they point to)
        #[arg(short = 'L', long)]
        dereference: bool,
        /// Do not overwrite existing destination files (skip them)
        #[arg(short, long, conflicts_with = "interactive")]
        no_clobber: bool,
        /// Ask on standard error before overwriting each existing destination file
        /// (answer y to overwrite; anything else, or end of input, skips it)
        #[arg(short, long)]
        interactive: bool,
        /// Keep each file's permission bits and modification time
        #[arg(short, long)]
        preserve: bool,
        /// Do not make each file durable before reporting it copied (faster; a crash
        /// soon after may lose files the summary counted)
        #[arg(long)]
        no_sync: bool,
        /// Source: pov:/path, a local path, or - for standard input (DST must then be
        /// a pov:/path naming a file)
        src: String,
        /// Destination: pov:/path or a local path
        dst: String,
    },
    /// Print PoV files to standard output
    Cat {
        /// Files (pov:/path; the pov: prefix is optional)
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// List a PoV directory (default: the tenant's root)
    Ls {
        /// Long format: kind, size in bytes, name
        #[arg(short, long)]
        long: bool,
        /// Print one JSON array (objects with name, kind "file"/"dir", size)
        #[arg(long, conflicts_with = "long")]
        json: bool,
        /// Directory or file (pov:/path; the pov: prefix is optional)
        path: Option<String>,
    },
    /// Remove PoV files (and directory trees with -r)
    Rm {
        /// Remove directories and their contents
        #[arg(short, long)]
        recursive: bool,
        /// Ignore paths that do not exist
        #[arg(short, long)]
        force: bool,
        /// Paths (pov:/path; the pov: prefix is optional)
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Show the kind, permission bits, size and modification time of PoV files or
    /// directories
    Stat {
        /// Print one JSON array (objects with path, kind, mode, size, mtime_ns)
        #[arg(long)]
        json: bool,
        /// Paths (pov:/path; the pov: prefix is optional)
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Make PoV directories
    Mkdir {
        /// Make missing parents too; an existing directory is no error
        #[arg(short, long)]
        parents: bool,
        /// Permission bits of the new directories, in octal (e.g. 755; default: the
        /// backend's, 700 on local files)
        #[arg(short, long, value_parser = parse_mode)]
        mode: Option<u32>,
        /// Directories (pov:/path; the pov: prefix is optional)
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Rename or move a PoV file or directory tree, in one atomic step
    #[command(
        after_help = "Both SRC and DST are inside PoV. If DST is an existing directory,         SRC moves into it under its own name; otherwise SRC is renamed to DST, replacing a file         (or empty directory) there unless -n is given. Open files elsewhere keep naming the old         path."
    )]
    Mv {
        /// Do not replace an existing destination (fail instead)
        #[arg(short, long)]
        no_clobber: bool,
        /// Source (pov:/path; the pov: prefix is optional)
        src: String,
        /// Destination (pov:/path; the pov: prefix is optional)
        dst: String,
    },
    /// Set the permission bits of PoV files or directories
    Chmod {
        /// Permission bits in octal (e.g. 640); set-id and sticky bits are not kept
        #[arg(value_parser = parse_mode)]
        mode: u32,
        /// Paths (pov:/path; the pov: prefix is optional)
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Mount a PoV directory as a local file system (FUSE), for programs that know
    /// nothing of PoV; serves it until unmounted
    #[command(after_help = "Runs in the foreground until the mount goes away: `fusermount -u MOUNTPOINT` \
        (or `umount` as root), or SIGINT/SIGTERM (Ctrl-C), which unmount it; a second signal \
        detaches a busy mount lazily. Files are owned by the mounting user; permission bits are \
        PoV's (set-id and sticky bits are refused); no links, device nodes or extended \
        attributes. --read-only mounts read-only. Example:\n  \
        pov-host mount --root pov:/projects /mnt/pov & tar -C /mnt/pov -xf src.tar")]
    Mount {
        /// PoV directory shown at the mount point (pov:/dir or /dir; default: the
        /// tenant's root)
        #[arg(long, value_name = "PATH", default_value = "/")]
        root: String,
        /// Let other users of this host reach the mount (FUSE allow_other; needs
        /// user_allow_other in /etc/fuse.conf unless root); permission bits still apply
        #[arg(long)]
        allow_other: bool,
        /// How long the kernel may cache names and attributes (e.g. 1s, 250ms, 0s):
        /// changes made through other sessions show up after at most this
        #[arg(long, value_name = "TIME", default_value = "1s", value_parser = humantime::parse_duration)]
        cache_timeout: std::time::Duration,
        /// Local directory to mount on
        mountpoint: PathBuf,
    },
    /// Show the capacity of the storage behind the tenant's namespace
    Df {
        /// Print one JSON object (the statvfs fields and the byte totals)
        #[arg(long)]
        json: bool,
        /// Path to ask about (default: the tenant's root)
        path: Option<String>,
    },
}

/// Permission bits from an octal argument (`755`, `0640`): at most `0o777`.
fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        Ok(_) => Err(format!("{s}: PoV keeps only permission bits (at most 777; no set-id or sticky bits)")),
        Err(_) => Err(format!("{s}: not an octal mode (e.g. 755)")),
    }
}

/// Runs the tool with the process's arguments; returns the exit code (0 success,
/// 1 failure, 2 usage error).
pub fn main() -> i32 {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).format_timestamp(None).init();
    exit_code(run(&cli))
}

/// The process's exit status for a command's result: 0 for success and for a command
/// cut short because the reader of standard output went away (`pov-host cat … |
/// head`); otherwise the error is printed and the status is 1.
fn exit_code(r: anyhow::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(_) if STDOUT_CLOSED.load(Ordering::Relaxed) => 0,
        Err(e) => {
            eprintln!("pov-host: error: {}", error_chain(&e));
            1
        }
    }
}

/// Set once a write to standard output failed with `BrokenPipe` (its reader closed
/// it). Only that makes a failed command exit 0: a `BrokenPipe` from anything else (a
/// PoV device's transport, a failover's "outcome unknown") is an error like any other.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Standard output, locked, noting in [`STDOUT_CLOSED`] when its reader is gone.
fn stdout() -> Stdout {
    Stdout(io::stdout().lock())
}

/// See [`stdout`].
struct Stdout(io::StdoutLock<'static>);

impl Stdout {
    fn noted<T>(r: io::Result<T>) -> io::Result<T> {
        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::BrokenPipe) {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Self::noted(self.0.write(buf))
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Self::noted(self.0.write_all(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        Self::noted(self.0.flush())
    }
}

/// `a: b: c` from an error chain, leaving out causes already in the previous message.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

/// Runs a parsed command line.
///
/// Errors: anything that makes the command fail, with context.
pub fn run(cli: &Cli) -> anyhow::Result<()> {
    if let Command::List { json } = cli.command {
        return list_devices(cli.device.as_deref(), json);
    }
    let session = open_session(cli)?;
    let res = run_with_session(&cli.command, &session, cli.queues as usize);
    if let Err(e) = session.close() {
        log::warn!("{}", crate::error::Chain(&e));
    }
    res
}

/// `pov-host mount`: serves the mount until it is unmounted; SIGINT, SIGTERM and
/// SIGHUP unmount it (a second one detaches a busy mount lazily).
fn mount(s: &Session, mountpoint: &Path, opts: &crate::fuse::MountOptions) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // Registered before mounting: a signal that arrives once the mount exists unmounts it.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).context("install signal handlers")?;
    let mp = mountpoint.to_path_buf();
    let root = opts.root.strip_prefix("pov:").unwrap_or(&opts.root).to_string();
    crate::fuse::serve(s, mountpoint, opts, |mut unmounter| {
        let mut out = stdout();
        let _ = writeln!(out, "pov:{root} mounted at {} (unmount with `fusermount -u {0}` or Ctrl-C)", mp.display());
        let _ = out.flush();
        drop(out);
        std::thread::spawn(move || {
            for (i, sig) in signals.forever().enumerate() {
                log::info!("signal {sig}: unmounting {}", mp.display());
                match unmounter.unmount() {
                    Ok(()) => return,
                    Err(e) if i == 0 => eprintln!(
                        "pov-host: cannot unmount {}: {e} (a process is using it); signal again to detach it lazily",
                        mp.display()
                    ),
                    Err(_) => match crate::fuse::lazy_unmount(&mp) {
                        Ok(()) => return,
                        Err(e) => eprintln!("pov-host: lazy unmount of {} failed: {e}", mp.display()),
                    },
                }
            }
        });
    })
    .with_context(|| format!("mount pov:{} at {}", opts.root, mountpoint.display()))?;
    eprintln!("pov-host: {} unmounted", mountpoint.display());
    Ok(())
}

/// Opens the device and a session as the command line says.
fn open_session(cli: &Cli) -> anyhow::Result<Session> {
    let device = cli
        .device
        .as_deref()
        .ok_or_else(|| anyhow!("no PoV device given: use --device DEV or set POV_DEVICE (see `pov-host list`)"))?;
    let tenant = cli.tenant.as_deref().ok_or_else(|| anyhow!("no tenant given: use --tenant NAME or set POV_TENANT"))?;
    let secret = read_secret(cli.secret_file.as_deref(), std::env::var_os("POV_SECRET"))?;
    let spec: DeviceSpec = device.parse()?;
    let opts = DeviceOptions { blkio_queues: cli.queues as usize, ..DeviceOptions::default() };
    let dev = Device::open_with(&spec, &opts)?;
    let prefix = cli.prefix.as_deref().map(|p| p.strip_prefix("pov:").unwrap_or(p)).unwrap_or_default();
    let protection = if cli.integrity_only { Protection::IntegrityOnly } else { Protection::Confidential };
    let opts = SessionOptions {
        queues: cli.queues,
        read_only: cli.read_only,
        prefix: prefix.to_string(),
        protection,
        ..SessionOptions::default()
    };
    let session = Session::open_with(&dev, tenant, &secret, &opts)?;
    if cli.trace {
        session.set_tracer(Some(std::sync::Arc::new(|t: &crate::trace::RequestTrace| eprintln!("{t}"))));
    }
    Ok(session)
}

/// The secret from `file` (preferred; `-` is standard input) or the `POV_SECRET` value
/// `env`, in a buffer wiped from memory when dropped.
///
/// Errors: neither given, the file unreadable, or a secret empty or over 255 bytes.
pub fn read_secret(file: Option<&Path>, env: Option<std::ffi::OsString>) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    read_secret_from(file, env, io::stdin().lock())
}

/// [`read_secret`] with `stdin` standing for standard input.
fn read_secret_from(
    file: Option<&Path>,
    env: Option<std::ffi::OsString>,
    stdin: impl io::Read,
) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    use std::os::unix::ffi::OsStringExt;
    let mut secret = match (file, env) {
        (Some(f), _) if f == Path::new("-") => read_bounded(stdin).context("read the secret from standard input")?,
        (Some(f), _) => {
            let file = fs::File::open(f).with_context(|| format!("secret file {}", f.display()))?;
            let meta = file.metadata().with_context(|| format!("secret file {}", f.display()))?;
            if meta.permissions().mode() & 0o077 != 0 {
                log::warn!("secret file {} is readable by other users (chmod 600 it)", f.display());
            }
            read_bounded(file).with_context(|| format!("read secret file {}", f.display()))?
        }
        (None, Some(v)) => Zeroizing::new(v.into_vec()),
        (None, None) => bail!(
            "no secret: use --secret-file FILE (or POV_SECRET_FILE) or set POV_SECRET (secrets are never taken as arguments)"
        ),
    };
    if secret.ends_with(b"\n") {
        secret.pop();
        if secret.ends_with(b"\r") {
            secret.pop();
        }
    }
    if secret.is_empty() {
        bail!("the secret is empty");
    }
    if secret.len() > pov_proto::admin::MAX_SECRET {
        bail!("the secret is longer than {} bytes", pov_proto::admin::MAX_SECRET);
    }
    Ok(secret)
}

/// Up to a secret's largest size plus `\r\n` and one byte (to see a longer one) from
/// `r`, in a buffer allocated once (a growing buffer leaves unwiped copies behind).
fn read_bounded(mut r: impl io::Read) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(vec![0u8; pov_proto::admin::MAX_SECRET + 3]);
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(got) => n += got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// Runs a session command (everything but `list`) on an open session.
///
/// Errors: anything that makes the command fail, with context.
pub fn run_with_session(cmd: &Command, s: &Session, workers: usize) -> anyhow::Result<()> {
    match cmd {
        Command::List { json } => list_devices(None, *json),
        Command::Cp { recursive, dereference, no_clobber, interactive, preserve, no_sync, src, dst } => {
            let ask = |d: &Loc| -> io::Result<bool> {
                eprint!("pov-host: overwrite {d}? ");
                let mut answer = String::new();
                io::stdin().read_line(&mut answer)?;
                Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes"))
            };
            let overwrite = if *no_clobber {
                Overwrite::Never
            } else if *interactive {
                Overwrite::Ask(&ask)
            } else {
                Overwrite::Always
            };
            let opts =
                CopyOptions { recursive: *recursive, dereference: *dereference, overwrite, preserve: *preserve, sync: !*no_sync };
            let summary = if src == "-" {
                copy_stdin(s, &mut io::stdin().lock(), &Loc::parse(dst), opts.sync)?
            } else {
                copy(s, &Loc::parse(src), &Loc::parse(dst), &opts, workers)?
            };
            writeln!(stdout(), "{summary}")?;
            Ok(())
        }
        Command::Mount { root, allow_other, cache_timeout, mountpoint } => {
            let opts = crate::fuse::MountOptions {
                root: root.clone(),
                allow_other: *allow_other,
                read_only: false,
                cache_timeout: *cache_timeout,
            };
            mount(s, mountpoint, &opts)
        }
        Command::Cat { paths } => {
            let mut out = stdout();
            for p in paths {
                cat(s, &pov_path(p), &mut out)?;
            }
            out.flush()?;
            Ok(())
        }
        Command::Ls { long, json, path } => {
            let p = pov_path(path.as_deref().unwrap_or("/"));
            let mut out = stdout();
            if *json {
                let entries = ls_entries(s, &p)?;
                let v: Vec<_> = entries
                    .iter()
                    .map(|e| serde_json::json!({"name": e.name, "kind": kind_name(e.kind), "size": e.size}))
                    .collect();
                writeln!(out, "{}", serde_json::Value::Array(v))?;
            } else {
                ls(s, &p, *long, &mut out)?;
            }
            out.flush()?;
            Ok(())
        }
        Command::Rm { recursive, force, paths } => {
            for p in paths {
                rm(s, &pov_path(p), *recursive, *force)?;
            }
            Ok(())
        }
        Command::Stat { json: true, paths } => {
            let mut v = Vec::new();
            for p in paths {
                let p = pov_path(p);
                let st = s.stat(&p).with_context(|| format!("stat pov:{p}"))?;
                v.push(serde_json::json!({
                    "path": format!("pov:{p}"), "kind": kind_name(st.kind), "mode": st.mode, "size": st.size, "mtime_ns": st.mtime_ns,
                }));
            }
            writeln!(stdout(), "{}", serde_json::Value::Array(v))?;
            Ok(())
        }
        Command::Stat { json: false, paths } => {
            let mut out = stdout();
            for p in paths {
                let p = pov_path(p);
                let st = s.stat(&p).with_context(|| format!("stat pov:{p}"))?;
                let kind = if st.kind == Kind::Dir { "directory" } else { "file" };
                writeln!(out, "  path: pov:{p}\n  kind: {kind}\n  mode: {:04o}\n  size: {} bytes", st.mode, st.size)?;
                writeln!(out, " mtime: {} ({} ns since the epoch)", format_utc(st.mtime_ns), st.mtime_ns)?;
            }
            Ok(())
        }
        Command::Mkdir { parents, mode, paths } => {
            for p in paths {
                let p = pov_path(p);
                let r = match (*parents, *mode) {
                    (true, None) => s.create_dir_all(&p),
                    (true, Some(m)) => match s.stat(&p) {
                        Ok(st) if st.kind == Kind::Dir => Ok(()),
                        _ => s.create_dir_all(parent_of(&p)).and_then(|()| s.create_dir(&p, Some(m))),
                    },
                    (false, m) => s.create_dir(&p, m),
                };
                r.with_context(|| format!("mkdir pov:{p}"))?;
            }
            Ok(())
        }
        Command::Mv { no_clobber, src, dst } => {
            let (src, mut dst) = (pov_path(src), pov_path(dst));
            if matches!(s.stat(&dst), Ok(st) if st.kind == Kind::Dir) && dst.trim_end_matches('/') != src.trim_end_matches('/') {
                dst = join(&dst, Loc::Pov(src.clone()).name().as_str());
            }
            let r = if *no_clobber { s.rename_noreplace(&src, &dst) } else { s.rename(&src, &dst) };
            r.with_context(|| format!("mv pov:{src} pov:{dst}"))?;
            Ok(())
        }
        Command::Chmod { mode, paths } => {
            for p in paths {
                let p = pov_path(p);
                s.set_attr(&p, Some(*mode), None).with_context(|| format!("chmod pov:{p}"))?;
            }
            Ok(())
        }
        Command::Df { json, path } => {
            let p = pov_path(path.as_deref().unwrap_or("/"));
            let f = s.statfs(&p).with_context(|| format!("df pov:{p}"))?;
            let used = f.blocks.saturating_sub(f.blocks_free).saturating_mul(u64::from(f.block_size));
            let mut out = stdout();
            if *json {
                let v = serde_json::json!({
                    "path": format!("pov:{p}"), "block_size": f.block_size, "name_max": f.name_max, "blocks": f.blocks,
                    "blocks_free": f.blocks_free, "blocks_available": f.blocks_available, "files": f.files,
                    "files_free": f.files_free, "total_bytes": f.total_bytes(), "used_bytes": used,
                    "available_bytes": f.available_bytes(),
                });
                writeln!(out, "{v}")?;
                return Ok(());
            }
            writeln!(out, "{:>16} {:>16} {:>16} {:>5}  path", "bytes", "used", "available", "use%")?;
            let pct = match f.total_bytes() {
                0 => "-".to_string(),
                t => format!("{}%", (u128::from(used) * 100).div_ceil(u128::from(t))),
            };
            writeln!(out, "{:>16} {:>16} {:>16} {:>5}  pov:{p}", f.total_bytes(), used, f.available_bytes(), pct)?;
            Ok(())
        }
    }
}

/// `"file"` or `"dir"`, as JSON output names kinds.
fn kind_name(k: Kind) -> &'static str {
    if k == Kind::Dir {
        "dir"
    } else {
        "file"
    }
}

/// The parent of an absolute PoV path (`/` for a top-level name).
fn parent_of(p: &str) -> &str {
    match p.trim_end_matches('/').rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

/// A copy endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loc {
    /// A path inside PoV (always starting with `/`).
    Pov(String),
    /// A local path.
    Local(PathBuf),
}

impl Loc {
    /// `pov:/x` (or `pov:x`) is inside PoV; anything else is local.
    pub fn parse(s: &str) -> Loc {
        match s.strip_prefix(POV_PREFIX) {
            Some(p) => Loc::Pov(pov_path(p)),
            None => Loc::Local(PathBuf::from(s)),
        }
    }

    fn join(&self, name: &str) -> Loc {
        match self {
            Loc::Pov(p) => Loc::Pov(join(p, name)),
            Loc::Local(p) => Loc::Local(p.join(name)),
        }
    }

    /// Last path component ("" for a root).
    fn name(&self) -> String {
        match self {
            Loc::Pov(p) => p.trim_end_matches('/').rsplit('/').next().unwrap_or("").to_string(),
            Loc::Local(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Loc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Loc::Pov(p) => write!(f, "{POV_PREFIX}{p}"),
            Loc::Local(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A PoV path from a command-line argument: strips an optional `pov:` and makes it
/// absolute.
pub fn pov_path(arg: &str) -> String {
    let p = arg.strip_prefix(POV_PREFIX).unwrap_or(arg);
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    }
}

/// What a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    File(u64),
    Dir,
    Other,
}

fn what(s: &Session, loc: &Loc) -> io::Result<Option<What>> {
    let r = match loc {
        Loc::Pov(p) => s.stat(p).map(|st| if st.kind == Kind::Dir { What::Dir } else { What::File(st.size) }),
        Loc::Local(p) => fs::metadata(p).map(|m| {
            if m.is_dir() {
                What::Dir
            } else if m.is_file() {
                What::File(m.len())
            } else {
                What::Other
            }
        }),
    };
    match r {
        Ok(w) => Ok(Some(w)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// One file to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Where the data comes from.
    pub src: Loc,
    /// Where it goes (created or truncated).
    pub dst: Loc,
    /// Bytes to copy (the source size when planned).
    pub size: u64,
}

/// Everything a copy will do, decided before any data moves.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Directories to create (local: all of them; PoV: only those that stay empty,
    /// since creating a file creates its parents).
    pub dirs: Vec<Loc>,
    /// Files to copy.
    pub files: Vec<Job>,
    /// Symbolic links inside the tree not followed (no `-L`), and links back into it.
    pub skipped_links: usize,
}

/// What `copy` does with a destination file that exists.
#[derive(Clone, Copy)]
pub enum Overwrite<'a> {
    /// Overwrite it (cp's default).
    Always,
    /// Skip it (`-n`).
    Never,
    /// Ask: the function says whether to overwrite (`-i`).
    Ask(&'a dyn Fn(&Loc) -> io::Result<bool>),
}

/// How `cp` copies.
#[derive(Clone, Copy)]
pub struct CopyOptions<'a> {
    /// Copy directories (`-r`).
    pub recursive: bool,
    /// Follow symbolic links inside local trees (`-L`).
    pub dereference: bool,
    /// Existing destination files.
    pub overwrite: Overwrite<'a>,
    /// Keep permission bits and modification times (`-p`).
    pub preserve: bool,
    /// Make each file (and its name) durable before counting it copied (the default;
    /// `--no-sync` turns it off).
    pub sync: bool,
}

impl CopyOptions<'_> {
    /// `cp` or `cp -r`: overwrite, do not follow links inside trees, sync, do not
    /// preserve attributes.
    pub fn new(recursive: bool) -> CopyOptions<'static> {
        CopyOptions { recursive, dereference: false, overwrite: Overwrite::Always, preserve: false, sync: true }
    }
}

/// Where `src` lands when copied to `dst`: into `dst` if it is an existing directory
/// (or written with a trailing `/`), else at `dst`.
fn target(src: &Loc, dst: &Loc, dst_raw_is_dir: bool) -> Loc {
    let name = src.name();
    if dst_raw_is_dir && !name.is_empty() {
        dst.join(&name)
    } else {
        dst.clone()
    }
}

fn dst_ends_with_slash(dst: &Loc) -> bool {
    match dst {
        Loc::Pov(p) => p.ends_with('/'),
        Loc::Local(p) => p.as_os_str().to_string_lossy().ends_with('/'),
    }
}

/// Decides what `cp [-r] src dst` copies.
///
/// Errors: a missing source, a directory without `-r`, a directory onto a file.
pub fn plan(s: &Session, src: &Loc, dst: &Loc, opts: &CopyOptions<'_>) -> anyhow::Result<Plan> {
    if let (Loc::Local(_), Loc::Local(_)) = (src, dst) {
        bail!("cp: one of SRC and DST must be a pov:/path (use cp(1) for local copies)");
    }
    let src_what =
        what(s, src).with_context(|| format!("cp: {src}"))?.ok_or_else(|| anyhow!("cp: {src}: no such file or directory"))?;
    let dst_what = what(s, dst).with_context(|| format!("cp: {dst}"))?;
    let into = dst_what == Some(What::Dir) || dst_ends_with_slash(dst);
    let to = target(src, dst, into);
    let mut plan = Plan::default();
    match src_what {
        What::File(size) => plan.files.push(Job { src: src.clone(), dst: to, size }),
        What::Other => bail!("cp: {src}: not a regular file or directory"),
        What::Dir => {
            if !opts.recursive {
                bail!("cp: {src} is a directory (use -r)");
            }
            if let Some(What::File(_)) = what(s, &to).with_context(|| format!("cp: {to}"))? {
                bail!("cp: cannot copy directory {src} onto file {to}");
            }
            let mut ancestors = Vec::new();
            walk(s, src, &to, opts.dereference, &mut ancestors, &mut plan)?;
        }
    }
    Ok(plan)
}

/// The identity (device, inode) of a local directory.
fn dir_id(p: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Adds `src`'s tree to `plan`. `ancestors`: the local directories being walked (a
/// followed link to one of them would loop).
fn walk(
    s: &Session,
    src: &Loc,
    dst: &Loc,
    dereference: bool,
    ancestors: &mut Vec<(u64, u64)>,
    plan: &mut Plan,
) -> anyhow::Result<()> {
    let mut entered = false;
    if let Loc::Local(p) = src {
        if let Some(id) = dir_id(p) {
            ancestors.push(id);
            entered = true;
        }
    }
    let mut entries: Vec<(String, What)> = Vec::new();
    match src {
        Loc::Pov(p) => {
            for e in s.list(p).with_context(|| format!("cp: list {src}"))? {
                let w = if e.kind == Kind::Dir { What::Dir } else { What::File(e.size) };
                entries.push((e.name, w));
            }
        }
        Loc::Local(p) => {
            for e in fs::read_dir(p).with_context(|| format!("cp: read directory {src}"))? {
                let e = e.with_context(|| format!("cp: read directory {src}"))?;
                let name =
                    e.file_name().into_string().map_err(|n| anyhow!("cp: {}: file name is not UTF-8", p.join(n).display()))?;
                let link = e.file_type().map(|t| t.is_symlink()).unwrap_or(false);
                if link && !dereference {
                    log::warn!(
                        "cp: skipping symbolic link {} (PoV has no symbolic links; -L copies what it points to)",
                        e.path().display()
                    );
                    plan.skipped_links += 1;
                    continue;
                }
                match fs::metadata(e.path()) {
                    Ok(m) if m.is_dir() && dir_id(&e.path()).is_some_and(|id| ancestors.contains(&id)) => {
                        log::warn!("cp: skipping {}: a link back into the tree being copied", e.path().display());
                        plan.skipped_links += 1;
                    }
                    Ok(m) if m.is_dir() => entries.push((name, What::Dir)),
                    Ok(m) if m.is_file() => entries.push((name, What::File(m.len()))),
                    Ok(_) => log::warn!("cp: skipping {} (not a regular file or directory)", e.path().display()),
                    Err(err) => log::warn!("cp: skipping {}: {err}", e.path().display()),
                }
            }
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    if matches!(dst, Loc::Local(_)) || entries.is_empty() {
        plan.dirs.push(dst.clone());
    }
    for (name, w) in entries {
        let (cs, cd) = (src.join(&name), dst.join(&name));
        match w {
            What::Dir => walk(s, &cs, &cd, dereference, ancestors, plan)?,
            What::File(size) => plan.files.push(Job { src: cs, dst: cd, size }),
            What::Other => {}
        }
    }
    if entered {
        ancestors.pop();
    }
    Ok(())
}

/// Whether file `d` exists.
fn exists(s: &Session, d: &Loc) -> io::Result<bool> {
    match d {
        Loc::Local(p) => Ok(fs::symlink_metadata(p).is_ok()),
        Loc::Pov(p) => match s.stat(p) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        },
    }
}

/// Copies as `cp [-r] [-L] [-n|-i] src dst` and returns a one-line summary.
///
/// Errors: the first failure, naming the file.
pub fn copy(s: &Session, src: &Loc, dst: &Loc, opts: &CopyOptions<'_>, workers: usize) -> anyhow::Result<String> {
    let started = Instant::now();
    let mut plan = plan(s, src, dst, opts)?;
    let mut kept_existing = 0usize;
    if !matches!(opts.overwrite, Overwrite::Always) {
        let mut files = Vec::with_capacity(plan.files.len());
        for j in std::mem::take(&mut plan.files) {
            let overwrite = match opts.overwrite {
                _ if !exists(s, &j.dst).with_context(|| format!("cp: {}", j.dst))? => true,
                Overwrite::Ask(ask) => ask(&j.dst).with_context(|| format!("cp: asking about {}", j.dst))?,
                _ => false,
            };
            if overwrite {
                files.push(j);
            } else {
                kept_existing += 1;
            }
        }
        plan.files = files;
    }
    for d in &plan.dirs {
        match d {
            Loc::Local(p) => fs::create_dir_all(p).with_context(|| format!("cp: create directory {}", p.display()))?,
            Loc::Pov(p) => s.create_dir_all(p).with_context(|| format!("cp: create directory {d}"))?,
        }
    }
    let total: u64 = plan.files.iter().map(|j| j.size).sum();
    let bar = if total >= PROGRESS_MIN_BYTES && io::stderr().is_terminal() {
        let style =
            ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .map(|s| s.progress_chars("=> "))
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        ProgressBar::new(total).with_style(style)
    } else {
        ProgressBar::hidden()
    };
    let copied = AtomicU64::new(0);
    let workers = workers.max(1);
    let fc = FileCopy { s, opts: PerFile { preserve: opts.preserve, sync: opts.sync }, bar: &bar };
    // Small files: one worker per file. Large files: one at a time, chunks in parallel.
    let (small, large): (Vec<&Job>, Vec<&Job>) = plan.files.iter().partition(|j| j.size <= CHUNK as u64);
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let work = || {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= small.len() || stop.load(Ordering::Relaxed) {
                    return;
                }
                let j = small[i];
                if let Err(e) = copy_file(fc, j, 1, &mut buf, &copied) {
                    stop.store(true, Ordering::Relaxed);
                    failed.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                }
            }
        };
        for _ in 1..workers.min(small.len().max(1)) {
            sc.spawn(work);
        }
        work();
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        bar.abandon();
        return Err(e);
    }
    let mut buf = Vec::new();
    for j in large {
        if let Err(e) = copy_file(fc, j, workers, &mut buf, &copied) {
            bar.abandon();
            return Err(e);
        }
    }
    bar.finish_and_clear();
    let bytes = copied.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let mib = bytes as f64 / (1024.0 * 1024.0);
    let rate = if secs > 0.0 { mib / secs } else { 0.0 };
    let files = plan.files.len();
    let mut skipped = String::new();
    if kept_existing > 0 {
        skipped += &format!("; {kept_existing} existing not overwritten");
    }
    if plan.skipped_links > 0 {
        skipped += &format!("; {} symbolic link{} skipped", plan.skipped_links, if plan.skipped_links == 1 { "" } else { "s" });
    }
    Ok(format!(
        "copied {files} file{} ({bytes} bytes, {mib:.1} MiB) in {secs:.2} s: {rate:.1} MiB/s{skipped}",
        if files == 1 { "" } else { "s" }
    ))
}

enum Src {
    Local(fs::File),
    Pov(crate::File),
}

impl Src {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        match self {
            // Fill the buffer unless the file ends: local reads may come back short.
            Src::Local(f) => {
                let mut n = 0;
                while n < buf.len() {
                    match f.read_at(&mut buf[n..], off + n as u64) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(n)
            }
            Src::Pov(f) => f.read_at(buf, off),
        }
    }
}

enum Dst {
    Local(fs::File),
    Pov(crate::File),
}

impl Dst {
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        match self {
            Dst::Local(f) => f.write_all_at(buf, off),
            Dst::Pov(f) => f.write_at(buf, off).map(|_| ()),
        }
    }
}

/// `cp - pov:/file`: copies everything `input` yields into the PoV file `dst`, as
/// [`copy`] copies a file (a temporary name, synced unless `sync` is off, renamed
/// into place); returns the summary line.
///
/// Errors: `dst` is local or an existing directory; read, write, sync and rename
/// failures (the temporary file is then removed).
pub fn copy_stdin(s: &Session, input: &mut dyn io::Read, dst: &Loc, sync: bool) -> anyhow::Result<String> {
    let started = Instant::now();
    let Loc::Pov(to) = dst else { bail!("cp: -: the destination of standard input must be a pov:/path") };
    if to.ends_with('/') || matches!(s.stat(to), Ok(st) if st.kind == Kind::Dir) {
        bail!("cp: -: {dst} is a directory (name the file to create)");
    }
    let Loc::Pov(part) = part_name(dst) else { unreachable!("part_name keeps the side") };
    let ctx = || format!("cp: - -> {dst}");
    let mut run = || -> anyhow::Result<u64> {
        let f = s.create(&part).with_context(ctx)?;
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0u64;
        loop {
            // Fill a whole chunk unless the input ends: one 1 MiB request per chunk.
            let mut n = 0;
            while n < buf.len() {
                match input.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(anyhow::Error::new(e).context(format!("{}: read standard input", ctx()))),
                }
            }
            if n > 0 {
                f.write_at(&buf[..n], off).with_context(|| format!("{}: write {n} at {off}", ctx()))?;
                off += n as u64;
            }
            if n < buf.len() {
                break;
            }
        }
        if sync {
            f.sync().with_context(|| format!("{}: sync", ctx()))?;
        }
        f.close().with_context(ctx)?;
        if sync { s.rename_sync(&part, to) } else { s.rename(&part, to) }
            .with_context(|| format!("{}: rename into place", ctx()))?;
        Ok(off)
    };
    match run() {
        Ok(bytes) => {
            let secs = started.elapsed().as_secs_f64();
            let mib = bytes as f64 / (1024.0 * 1024.0);
            let rate = if secs > 0.0 { mib / secs } else { 0.0 };
            Ok(format!("copied standard input ({bytes} bytes, {mib:.1} MiB) in {secs:.2} s: {rate:.1} MiB/s"))
        }
        Err(e) => {
            let _ = s.remove(&part);
            Err(e)
        }
    }
}

/// What [`copy_file`] needs of the [`CopyOptions`] (which are not `Sync`).
#[derive(Clone, Copy)]
struct PerFile {
    preserve: bool,
    sync: bool,
}

/// What every file of one `cp` shares: the session, the per-file options, the
/// progress bar.
#[derive(Clone, Copy)]
struct FileCopy<'a> {
    s: &'a Session,
    opts: PerFile,
    bar: &'a ProgressBar,
}

/// Temporary names of files being copied, unique in this process.
static PART: AtomicU64 = AtomicU64::new(0);

/// The temporary name a copy to `dst` is written under: `.NAME.pov-part-PID-N` in the
/// same directory (NAME cut to 200 bytes so the whole stays a valid component).
fn part_name(dst: &Loc) -> Loc {
    let name = dst.name();
    let mut cut = name.len().min(200);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let n = PART.fetch_add(1, Ordering::Relaxed);
    let part = format!(".{}.pov-part-{}-{n}", &name[..cut], std::process::id());
    match dst {
        Loc::Pov(p) => Loc::Pov(join(parent_of(p), &part)),
        Loc::Local(p) => Loc::Local(p.with_file_name(part)),
    }
}

/// Permission bits and modification time (ns since the epoch) of a copy's source.
fn attributes(s: &Session, src: &Loc) -> io::Result<(u32, u64)> {
    match src {
        Loc::Pov(p) => s.stat(p).map(|st| (st.mode, st.mtime_ns)),
        Loc::Local(p) => {
            use std::os::unix::fs::PermissionsExt;
            let m = fs::metadata(p)?;
            let ns = m.modified()?.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64);
            Ok((m.permissions().mode() & 0o777, ns))
        }
    }
}

/// How often [`copy_file`] starts a file over after a failover left a step's outcome
/// unknown.
const COPY_TRIES: usize = 3;

/// Copies one file (see [`copy_file_once`]). When a PoV session failover leaves the
/// outcome of a non-idempotent step unknown (the exclusive create of the temporary
/// file, its removal, the rename), the file is copied again under a new temporary
/// name, up to [`COPY_TRIES`] times in all: the temporary name is the copy's own, so
/// starting over loses nothing and never touches anyone else's file.
fn copy_file(c: FileCopy<'_>, j: &Job, workers: usize, buf: &mut Vec<u8>, copied: &AtomicU64) -> anyhow::Result<()> {
    let bar = c.bar;
    let mut tries = 1;
    loop {
        let this_try = AtomicU64::new(0);
        let r = copy_file_once(c, j, workers, buf, &this_try);
        let bytes = this_try.into_inner();
        match r {
            Err(e)
                if tries < COPY_TRIES && e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(crate::outcome_unknown)) =>
            {
                log::warn!("{}; copying it again under a new temporary name", error_chain(&e));
                bar.dec(bytes);
                tries += 1;
            }
            r => {
                copied.fetch_add(bytes, Ordering::Relaxed);
                return r;
            }
        }
    }
}

/// Copies one file (see [`copy_file_to`]) under a temporary name, then renames it
/// into place; on failure the temporary file is removed (best effort).
fn copy_file_once(c: FileCopy<'_>, j: &Job, workers: usize, buf: &mut Vec<u8>, copied: &AtomicU64) -> anyhow::Result<()> {
    let FileCopy { s, opts, .. } = c;
    let ctx = || format!("cp: {} -> {}", j.src, j.dst);
    let part = part_name(&j.dst);
    let r = copy_file_to(c, j, &part, workers, buf, copied).and_then(|()| match (&part, &j.dst) {
        (Loc::Pov(from), Loc::Pov(to)) => {
            let r = if opts.sync { s.rename_sync(from, to) } else { s.rename(from, to) };
            match r {
                Ok(()) => Ok(()),
                // A failover while the rename was in flight: it ran if the temporary
                // name is gone and the real one is there.
                Err(e) if matches!(s.stat(from), Err(ref g) if g.kind() == io::ErrorKind::NotFound) && s.stat(to).is_ok() => {
                    log::info!("{}: rename outcome was unknown ({e}); it ran", ctx());
                    Ok(())
                }
                Err(e) => Err(anyhow::Error::new(e).context(format!("{}: rename into place", ctx()))),
            }
        }
        (Loc::Local(from), Loc::Local(to)) => {
            fs::rename(from, to).with_context(|| format!("{}: rename into place", ctx()))?;
            if opts.sync {
                let dir = to.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
                fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("{}: sync {}", ctx(), dir.display()))?;
            }
            Ok(())
        }
        _ => unreachable!("part_name keeps the side"),
    });
    if r.is_err() {
        let _ = match &part {
            Loc::Pov(p) => s.remove(p),
            Loc::Local(p) => fs::remove_file(p),
        };
    }
    r
}

/// Copies `j.src` to `to` with `workers` threads (1 MiB chunks), adding to `copied`
/// and `bar`; with `opts.sync` the data is durable, with `opts.preserve` the source's
/// mode and modification time are set, before it returns.
fn copy_file_to(c: FileCopy<'_>, j: &Job, to: &Loc, workers: usize, buf: &mut Vec<u8>, copied: &AtomicU64) -> anyhow::Result<()> {
    let FileCopy { s, opts, bar } = c;
    let ctx = || format!("cp: {} -> {}", j.src, j.dst);
    let src = match &j.src {
        Loc::Local(p) => Src::Local(fs::File::open(p).with_context(ctx)?),
        Loc::Pov(p) => Src::Pov(s.open_file(p, &OpenOptions::new()).with_context(ctx)?),
    };
    let attrs = if opts.preserve { Some(attributes(s, &j.src).with_context(ctx)?) } else { None };
    let dst = match to {
        Loc::Local(p) => {
            if let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).with_context(ctx)?;
            }
            Dst::Local(fs::File::create(p).with_context(ctx)?)
        }
        Loc::Pov(p) => Dst::Pov(s.create(p).with_context(ctx)?),
    };
    let chunks = j.size.div_ceil(CHUNK as u64);
    let next = AtomicU64::new(0);
    let one = |buf: &mut Vec<u8>| -> anyhow::Result<bool> {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= chunks {
            return Ok(false);
        }
        let off = i * CHUNK as u64;
        let want = (j.size - off).min(CHUNK as u64) as usize;
        buf.resize(CHUNK, 0);
        let n = src.read_at(&mut buf[..want], off).with_context(|| format!("{}: read {} at {off}", ctx(), want))?;
        if n > 0 {
            dst.write_all_at(&buf[..n], off).with_context(|| format!("{}: write {n} at {off}", ctx()))?;
        }
        if n < want {
            log::warn!("{}: source shrank while copying (short read at {off})", ctx());
        }
        copied.fetch_add(n as u64, Ordering::Relaxed);
        bar.inc(n as u64);
        Ok(true)
    };
    if workers <= 1 || chunks <= 1 {
        while one(buf)? {}
    } else {
        let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        std::thread::scope(|sc| {
            let work = || {
                let mut b = Vec::new();
                loop {
                    match one(&mut b) {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(e) => {
                            next.store(chunks, Ordering::Relaxed);
                            failed.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                            return;
                        }
                    }
                }
            };
            for _ in 1..workers.min(chunks as usize) {
                sc.spawn(work);
            }
            work();
        });
        if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
    }
    if let Src::Pov(f) = src {
        f.close().with_context(ctx)?;
    }
    match dst {
        Dst::Pov(f) => {
            if opts.sync {
                f.sync().with_context(|| format!("{}: sync", ctx()))?;
            }
            f.close().with_context(ctx)?;
        }
        Dst::Local(f) => {
            if let Some((_, mtime)) = attrs {
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(mtime);
                f.set_modified(t).with_context(|| format!("{}: set the modification time", ctx()))?;
            }
            if opts.sync {
                f.sync_all().with_context(|| format!("{}: sync", ctx()))?;
            }
        }
    }
    if let Some((mode, mtime)) = attrs {
        match to {
            Loc::Pov(p) => s.set_attr(p, Some(mode), Some(mtime)),
            Loc::Local(p) => {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(p, fs::Permissions::from_mode(mode))
            }
        }
        .with_context(|| format!("{}: set mode and modification time", ctx()))?;
    }
    Ok(())
}

/// Writes the PoV file at `path` to `out`, 4 MiB at a time (1 MiB requests, in
/// parallel on the session's queues).
///
/// Errors: open or read failures, write failures on `out` (a broken pipe included).
pub fn cat(s: &Session, path: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let f = s.open_file(path, &OpenOptions::new()).with_context(|| format!("cat pov:{path}"))?;
    let mut buf = vec![0u8; 4 * CHUNK];
    let mut off = 0u64;
    loop {
        let n = f.read_at(&mut buf, off).with_context(|| format!("cat pov:{path}: read at {off}"))?;
        out.write_all(&buf[..n])?;
        off += n as u64;
        if n < buf.len() {
            break;
        }
    }
    f.close().with_context(|| format!("cat pov:{path}"))?;
    Ok(())
}

/// Lists `path` to `out`: a directory's entries (directories with a trailing `/`), or
/// the file itself. `long` adds kind (`d`/`-`) and size in bytes.
///
/// Errors: list/stat failures, write failures on `out`.
pub fn ls(s: &Session, path: &str, long: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    for e in ls_entries(s, path)? {
        let dir = e.kind == Kind::Dir;
        let slash = if dir { "/" } else { "" };
        if long {
            writeln!(out, "{} {:>14} {}{slash}", if dir { 'd' } else { '-' }, e.size, e.name)?;
        } else {
            writeln!(out, "{}{slash}", e.name)?;
        }
    }
    Ok(())
}

/// What `ls` shows for `path`: a directory's entries, or the file itself.
fn ls_entries(s: &Session, path: &str) -> anyhow::Result<Vec<crate::DirEntry>> {
    match s.list(path) {
        Ok(e) => Ok(e),
        Err(e) if crate::status_of(&e) == Some(crate::Status::NotDir) => {
            let st = s.stat(path).with_context(|| format!("ls pov:{path}"))?;
            let name = path.rsplit('/').next().unwrap_or(path).to_string();
            Ok(vec![crate::DirEntry { kind: st.kind, size: st.size, name }])
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("ls pov:{path}"))),
    }
}

/// Removes `path`; directories need `recursive`. `force` ignores a missing path.
///
/// Errors: a directory without `recursive`, the namespace root, remove failures.
pub fn rm(s: &Session, path: &str, recursive: bool, force: bool) -> anyhow::Result<()> {
    if path.split('/').all(|c| c.is_empty() || c == ".") {
        bail!("rm: refusing to remove the root of the namespace");
    }
    let st = match s.stat(path) {
        Ok(st) => st,
        Err(e) if force && e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("rm pov:{path}"))),
    };
    if st.kind == Kind::Dir && !recursive {
        bail!("rm: pov:{path} is a directory (use -r)");
    }
    s.remove_all(path).with_context(|| format!("rm pov:{path}"))
}

/// RFC 3339 in UTC with nanoseconds (`YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, via
/// `humantime`) for `ns` nanoseconds since the Unix epoch.
pub fn format_utc(ns: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
    humantime::format_rfc3339_nanos(t).to_string()
}

/// Compatibility re-exports: device discovery moved to [`crate::discover`].
pub use crate::discover::{scan_sysfs, FoundDevice};

/// The CONFIG column of `list`: what probing the device found.
fn probe(spec: &DeviceSpec) -> String {
    match discover::probe(spec) {
        Ok(d) => {
            let g = d.geometry();
            // What a host gains from this device's version of the protocol.
            let windows = if d.config().has(pov_proto::layout::features::RESPONSE_WINDOWS) {
                ", response windows: 1 round trip per request"
            } else {
                ", no response windows: 2 round trips per request on /dev/vdX"
            };
            format!("ok (name {:?}, {} areas x {} queues{windows})", d.name(), g.areas, g.queues_per_area)
        }
        Err(e) => format!("INVALID: {}", crate::error::Chain(&e)),
    }
}

fn list_devices(extra: Option<&str>, json: bool) -> anyhow::Result<()> {
    let found = discover::discover();
    let mut out = stdout();
    let mut rows = Vec::new();
    for d in &found {
        rows.push((d.path.display().to_string(), d.serial.clone(), Some(d.capacity), probe(&d.spec())));
    }
    if let Some(spec) = extra {
        let spec: DeviceSpec = spec.parse()?;
        if !found.iter().any(|d| d.spec() == spec) {
            let cap = discover::probe(&spec).ok().map(|d| d.capacity());
            let serial = if matches!(spec, DeviceSpec::VhostUser(_)) { "(n/a: vhost-user)" } else { "-" };
            rows.push((spec.to_string(), serial.to_string(), cap, probe(&spec)));
        }
    }
    if rows.is_empty() {
        anyhow::bail!(
            "no PoV devices found (no /sys/block/vd*/serial starting with \"pov-\"; give a vhost-user one with --device)"
        );
    }
    let invalid = rows.iter().filter(|r| r.3.starts_with("INVALID")).count();
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(path, serial, cap, status)| {
                serde_json::json!({"device": path, "serial": serial, "capacity_bytes": cap, "config": status})
            })
            .collect();
        writeln!(out, "{}", serde_json::Value::Array(v))?;
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(6);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(6);
    if !json {
        writeln!(out, "{:<w0$}  {:<w1$}  {:>10}  CONFIG", "DEVICE", "SERIAL", "CAPACITY")?;
    }
    for (path, serial, cap, status) in rows.into_iter().filter(|_| !json) {
        let cap = cap.map_or("-".to_string(), |c| format!("{} MiB", c >> 20));
        writeln!(out, "{path:<w0$}  {serial:<w1$}  {cap:>10}  {status}")?;
    }
    // Like ls(1) with a missing file: everything is shown, and the status says so.
    if invalid > 0 {
        anyhow::bail!("{invalid} of the devices listed is not a valid PoV device (CONFIG column)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pov-host").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `list` opens no session: its help puts the session options under a heading
    /// that says so, apart from the options it uses.
    #[test]
    fn list_help_sets_the_session_options_apart() {
        let mut cmd = Cli::command();
        cmd.build();
        let list = cmd.find_subcommand_mut("list").expect("list").render_help().to_string();
        let (own, session) = list.split_once(SESSION_OPTIONS).unwrap_or_else(|| panic!("no session heading: {list}"));
        assert!(own.contains("--device") && !own.contains("--tenant"), "{own}");
        assert!(session.contains("--tenant") && session.contains("--secret-file") && !session.contains("--device"), "{session}");
    }

    #[test]
    fn parses_commands_and_global_options_anywhere() {
        let c = parse(&["--device", "/dev/vdb", "-t", "acme", "cp", "-r", "a", "pov:/b"]).unwrap();
        assert_eq!(c.device.as_deref(), Some("/dev/vdb"));
        assert_eq!(c.tenant.as_deref(), Some("acme"));
        assert_eq!(c.queues, 4);
        assert!(matches!(c.command, Command::Cp { recursive: true, ref src, ref dst, .. } if src == "a" && dst == "pov:/b"));
        assert!(matches!(
            parse(&["cp", "-nL", "a", "pov:/b"]).unwrap().command,
            Command::Cp { no_clobber: true, dereference: true, interactive: false, .. }
        ));
        assert!(parse(&["cp", "-n", "-i", "a", "pov:/b"]).is_err(), "-n and -i conflict");
        let c = parse(&["ls", "pov:/x", "--secret-file", "/s", "-q", "8"]).unwrap();
        assert_eq!(c.secret_file.as_deref(), Some(Path::new("/s")));
        assert_eq!(c.queues, 8);
        assert!(matches!(c.command, Command::Ls { long: false, json: false, path: Some(ref p) } if p == "pov:/x"));
        assert!(matches!(parse(&["rm", "-rf", "pov:/x", "pov:/y"]).unwrap().command,
            Command::Rm { recursive: true, force: true, ref paths } if paths.len() == 2));
        assert!(parse(&["-q", "0", "ls"]).is_err());
        assert!(parse(&["-q", "65", "ls"]).is_err());
        assert!(parse(&["cat"]).is_err(), "cat needs a path");
        assert!(parse(&["cp", "a"]).is_err());
        // There is no way to pass the secret on the command line.
        assert!(parse(&["--secret", "x", "ls"]).is_err());
        assert!(parse(&["ls", "--secret=x"]).is_err());
    }

    #[test]
    fn help_mentions_the_secret_rules() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("POV_SECRET"), "{help}");
        assert!(help.contains("POV_SECRET_FILE"), "{help}");
        assert!(help.contains("vhost-user:"), "{help}");
        assert!(help.contains("pov:/"), "{help}");
    }

    #[test]
    fn secrets_come_from_file_or_env() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        fs::write(&f, "hunter2\n").unwrap();
        assert_eq!(read_secret(Some(&f), Some("env".into())).unwrap().as_slice(), b"hunter2");
        fs::write(&f, "crlf\r\n").unwrap();
        assert_eq!(read_secret(Some(&f), None).unwrap().as_slice(), b"crlf");
        assert_eq!(read_secret(None, Some("fromenv".into())).unwrap().as_slice(), b"fromenv");
        let e = read_secret(None, None).unwrap_err().to_string();
        assert!(e.contains("POV_SECRET") && e.contains("--secret-file"), "{e}");
        assert!(read_secret(Some(&dir.path().join("missing")), None).is_err());
        fs::write(&f, "\n").unwrap();
        assert!(read_secret(Some(&f), None).is_err(), "empty secret");
        // `-` is standard input; a secret longer than 255 bytes is refused.
        let stdin: &[u8] = b"piped\n";
        assert_eq!(read_secret_from(Some(Path::new("-")), Some("env".into()), stdin).unwrap().as_slice(), b"piped");
        fs::write(&f, [b'x'; 256]).unwrap();
        assert!(read_secret(Some(&f), None).unwrap_err().to_string().contains("255"));
        fs::write(&f, [b'x'; 255]).unwrap();
        assert_eq!(read_secret(Some(&f), None).unwrap().len(), 255);
    }

    #[test]
    fn locations_parse() {
        assert_eq!(Loc::parse("pov:/a/b"), Loc::Pov("/a/b".into()));
        assert_eq!(Loc::parse("pov:a"), Loc::Pov("/a".into()));
        assert_eq!(Loc::parse("pov:"), Loc::Pov("/".into()));
        assert_eq!(Loc::parse("./pov:x"), Loc::Local("./pov:x".into()));
        assert_eq!(Loc::parse("/tmp/x"), Loc::Local("/tmp/x".into()));
        assert_eq!(pov_path("x/y"), "/x/y");
        assert_eq!(pov_path("pov:/x"), "/x");
        assert_eq!(Loc::parse("pov:/a/b/").name(), "b");
        assert_eq!(Loc::parse("pov:/").name(), "");
        assert_eq!(Loc::parse("dir/file.txt").name(), "file.txt");
        assert_eq!(target(&Loc::parse("x/f"), &Loc::parse("pov:/d"), true), Loc::Pov("/d/f".into()));
        assert_eq!(target(&Loc::parse("x/f"), &Loc::parse("pov:/d"), false), Loc::Pov("/d".into()));
        assert_eq!(target(&Loc::parse("pov:/"), &Loc::parse("out"), true), Loc::Local("out".into()));
        assert!(dst_ends_with_slash(&Loc::parse("pov:/d/")));
        assert!(dst_ends_with_slash(&Loc::parse("d/")));
    }

    #[test]
    fn dates_format_in_utc() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(format_utc(951_782_400_000_000_000), "2000-02-29T00:00:00.000000000Z");
        assert_eq!(format_utc(1_700_000_000_123_456_789), "2023-11-14T22:13:20.123456789Z");
        assert_eq!(format_utc(4_107_542_399_000_000_000), "2100-02-28T23:59:59.000000000Z");
    }

    #[test]
    fn a_missing_device_is_reported_with_its_cause_once() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        fs::write(&secret, "pw").unwrap();
        let dev = dir.path().join("vdq");
        let args = ["--device", dev.to_str().unwrap(), "-t", "acme", "--secret-file", secret.to_str().unwrap(), "stat", "pov:/x"];
        let e = run(&parse(&args).unwrap()).unwrap_err();
        let chain = format!("{e:#}");
        assert!(chain.starts_with(&format!("open device {}: device access failed: ", dev.display())), "{chain}");
        assert_eq!(chain.matches("No such file or directory").count(), 1, "{chain}");
        // The types no longer repeat their sources, so nothing is left to deduplicate.
        assert_eq!(error_chain(&e), chain);
    }

    /// A `BrokenPipe` that is not standard output's (here: a failover leaving a
    /// create's outcome unknown, of the transport's kind) fails the command: it used
    /// to exit 0, so `cp -r` across a pov-dpud restart "succeeded" with files missing.
    #[test]
    fn a_broken_pipe_not_of_stdout_fails_the_command() {
        let e = io::Error::new(io::ErrorKind::BrokenPipe, crate::OutcomeUnknown("open /x: outcome unknown".into()));
        assert!(crate::outcome_unknown(&e));
        assert_eq!(exit_code(Err(anyhow::Error::new(e).context("cp: a -> pov:/x"))), 1);
        assert_eq!(exit_code(Ok(())), 0);
        let mut out = Stdout(io::stdout().lock());
        assert!(Stdout::noted::<()>(Err(io::ErrorKind::Other.into())).is_err());
        assert!(!STDOUT_CLOSED.load(Ordering::Relaxed), "only a BrokenPipe of stdout counts");
        out.flush().unwrap();
    }

    #[test]
    fn error_chains_are_deduplicated() {
        let e = anyhow::Error::new(io::Error::other("inner")).context("outer: inner").context("top");
        assert_eq!(error_chain(&e), "top: outer: inner");
    }
}
