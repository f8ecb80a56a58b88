//! The `bowline` binary: see `bowline --help`.

fn main() -> std::process::ExitCode {
    bowline::cli::main()
}
