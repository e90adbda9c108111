//! The `chromaprod` binary: `chromaprod daemon` runs the service; every other
//! verb is a CLI command, offline or over the daemon's control socket
//! (`src/cli/`).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
