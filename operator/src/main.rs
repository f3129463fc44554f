//! The `coolpy7-operator` binary. The controller is not written yet (see the README): for now
//! it only says so, rather than pretending to run.

fn main() -> std::process::ExitCode {
    eprintln!("coolpy7-operator: the controller is not implemented yet; see README.md");
    std::process::ExitCode::FAILURE
}
