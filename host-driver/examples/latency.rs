//! Round-trip latency and throughput of small PoV requests through the host driver.
//!
//! ```text
//! POV_SECRET=... cargo run --release -p pov-host --example latency -- DEVICE TENANT [SECONDS] [THREADS]
//! ```
//! Writes a 4 KiB file, then for SECONDS (default 3) reads it 4 KiB at a time from
//! THREADS threads (default 1, i.e. QD1), and prints requests/s and latency percentiles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pov_host::{Device, Session};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: latency DEVICE TENANT [SECONDS] [THREADS]  (secret in POV_SECRET)");
        std::process::exit(2);
    }
    let secs: f64 = args.get(3).map_or(Ok(3.0), |s| s.parse())?;
    let threads: usize = args.get(4).map_or(Ok(1), |s| s.parse())?;
    let secret = std::env::var("POV_SECRET").map_err(|_| "set POV_SECRET")?;
    let device = Device::open(&args[1])?;
    let session = Arc::new(Session::open(&device, &args[2], secret.as_bytes(), threads.max(1) as u32)?);
    session.write("/.latency-probe", &[7u8; 4096])?;
    let f = Arc::new(session.open_file("/.latency-probe", &pov_host::OpenOptions::new())?);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let f = Arc::clone(&f);
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut buf = [0u8; 4096];
                while Instant::now() < deadline {
                    let t = Instant::now();
                    f.read_at(&mut buf, 0).expect("read");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<Duration> = workers.into_iter().flat_map(|w| w.join().expect("worker")).collect();
    lat.sort();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or_default();
    println!(
        "{} reads of 4 KiB in {secs} s with {threads} thread(s): {:.0} req/s, p50 {:?}, p99 {:?}, max {:?}",
        lat.len(),
        lat.len() as f64 / secs,
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or_default()
    );
    drop(f);
    session.remove("/.latency-probe")?;
    Ok(())
}
