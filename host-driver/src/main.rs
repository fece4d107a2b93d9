fn main() {
    std::process::exit(pov_host::cli::main());
}
