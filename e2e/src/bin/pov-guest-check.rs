//! `pov-guest-check`: the PoV checks `scripts/guest-test` runs inside a QEMU guest
//! (see `pov_e2e::guest`), and the tree generator the host uses to verify their result.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "PoV checks inside a guest, through the guest kernel's virtio-blk driver")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs every check against the PoV device found in /sys/block; exits 1 if any fails.
    Run {
        /// Tenant (the secret comes from --secret-file, else POV_SECRET).
        #[arg(long, env = "POV_TENANT")]
        tenant: String,
        /// File holding the tenant's secret (one trailing newline dropped).
        #[arg(long, env = "POV_SECRET_FILE", value_name = "FILE")]
        secret_file: Option<PathBuf>,
        /// Serial the PoV device must show.
        #[arg(long)]
        expect_serial: String,
        /// The pov-host binary.
        #[arg(long, default_value = "/bin/pov-host")]
        pov_host: PathBuf,
        /// Scratch directory on a local file system.
        #[arg(long, default_value = "/tmp/pov-guest")]
        scratch: PathBuf,
    },
    /// Writes the deterministic tree of seed SEED under DIR.
    MakeTree { dir: PathBuf, seed: u64 },
    /// Compares tree A with tree B byte by byte; exits 1 on the first difference.
    Compare { a: PathBuf, b: PathBuf },
    /// Prints the seeds of the trees `run` copies to pov:/guest/tree<i>.
    TreeSeeds,
}

fn main() {
    let cli = Cli::parse();
    let rc = match cli.cmd {
        Cmd::Run { tenant, secret_file, expect_serial, pov_host, scratch } => {
            let secret = match pov_host::cli::read_secret(secret_file.as_deref(), std::env::var_os("POV_SECRET")) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("pov-guest-check: {e:#}");
                    std::process::exit(2);
                }
            };
            let cfg = pov_e2e::guest::GuestConfig { tenant, secret, secret_file, expect_serial, pov_host, scratch };
            let failed = pov_e2e::guest::run(&cfg);
            println!("pov-guest-check: {failed} check(s) failed");
            i32::from(failed > 0)
        }
        Cmd::MakeTree { dir, seed } => match pov_e2e::guest::make_tree(&dir, seed) {
            Ok(n) => {
                println!("{n} files under {}", dir.display());
                0
            }
            Err(e) => {
                eprintln!("pov-guest-check: make-tree {}: {e}", dir.display());
                1
            }
        },
        Cmd::Compare { a, b } => match pov_e2e::guest::compare_trees(&a, &b) {
            Ok(n) => {
                println!("{n} files identical: {} = {}", a.display(), b.display());
                0
            }
            Err(e) => {
                eprintln!("pov-guest-check: compare: {e}");
                1
            }
        },
        Cmd::TreeSeeds => {
            let s: Vec<String> = pov_e2e::guest::TREE_SEEDS.iter().map(u64::to_string).collect();
            println!("{}", s.join(" "));
            0
        }
    };
    std::process::exit(rc);
}
