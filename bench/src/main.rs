//! `pov-bench` binary: see the `pov_bench` crate docs.

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let o = pov_bench::run::Options::parse();
    match pov_bench::run::run(&o) {
        Ok(r) => {
            if !o.no_header {
                println!("{}", pov_bench::report::Report::header());
            }
            println!("{}", r.row());
            if let Some(path) = &o.json {
                let text = serde_json::to_string_pretty(&r).expect("a report serializes");
                if let Err(e) = std::fs::write(path, text + "\n") {
                    eprintln!("pov-bench: write {}: {e}", path.display());
                    std::process::exit(1);
                }
            }
        }
        Err(e) => {
            eprintln!("pov-bench: {e:#}");
            std::process::exit(1);
        }
    }
}
