//! The `engine` binary.

fn main() {
    std::process::exit(ecstrain::engine::cli::main());
}
