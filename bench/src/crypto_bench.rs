//! `pov-crypto-bench`: the cost of the session crypto of protocol v2
//! (`pov_proto::crypto`) per request and response, by size and protection, on one
//! core: what one side (host or DPU) spends per IO. Prints, for each case, the median
//! of `--rounds` timed rounds in µs per operation and GB/s.
//!
//! ```text
//! pov-crypto-bench [--rounds N] [--cpu CPU]
//! ```

use clap::Parser;
use pov_proto::crypto::{Protection, SessionKeys};
use pov_proto::io::{REQUEST_TAG_OFFSET, RESPONSE_TAG_OFFSET};
use pov_proto::layout::HEADER_SIZE;
use std::time::{Duration, Instant};

/// Command line.
#[derive(Parser)]
#[command(about = "Cost of the PoV session crypto per request and response (µs per operation, GB/s)")]
struct Args {
    /// Timed rounds per case (the median is printed).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Pin to this CPU (default: the last).
    #[arg(long)]
    cpu: Option<usize>,
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it;
    // sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Median µs per call of `f` over `rounds` rounds of about 200 ms each.
fn time(rounds: usize, mut f: impl FnMut(u64)) -> f64 {
    let mut id = 0u64;
    let mut per_round = Vec::new();
    for _ in 0..rounds {
        let (start, mut n) = (Instant::now(), 0u64);
        while start.elapsed() < Duration::from_millis(200) {
            for _ in 0..16 {
                id += 1;
                f(id);
            }
            n += 16;
        }
        per_round.push(start.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    per_round.sort_by(f64::total_cmp);
    per_round[per_round.len() / 2]
}

fn main() {
    let a = Args::parse();
    pin(a.cpu.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()) - 1));
    let k = SessionKeys::derive(b"bench-secret", &[1; 32], &[2; 32], "bench", 7);
    println!("{:40} {:>10} {:>8}", "operation (one side)", "µs/op", "GB/s");
    for payload in [0usize, 4096, 1 << 20] {
        let mut buf = vec![0x5au8; HEADER_SIZE + payload];
        let row = |what: &str, us: f64| {
            let gbs = if payload == 0 { f64::NAN } else { payload as f64 / us / 1e3 };
            println!("{:40} {us:10.2} {gbs:8.2}", format!("{what}, {payload} B payload"));
        };
        row("seal request", time(a.rounds, |id| k.seal_request(1, id, &mut buf, REQUEST_TAG_OFFSET)));
        for p in [Protection::Confidential, Protection::IntegrityOnly] {
            let us = time(a.rounds, |id| k.seal_response(1, id, &mut buf, HEADER_SIZE, RESPONSE_TAG_OFFSET, p));
            row(&format!("seal response {p:?}"), us);
            // Opening costs the same work as sealing; a round trip checks that it opens.
            k.seal_response(1, 0, &mut buf, HEADER_SIZE, RESPONSE_TAG_OFFSET, p);
            assert!(k.open_response(1, 0, &mut buf, HEADER_SIZE, RESPONSE_TAG_OFFSET, p).is_ok());
        }
    }
}
