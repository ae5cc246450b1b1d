//! The `nubo` orchestrator daemon. Not built yet: see the orchestrator issue.
fn main() {
    eprintln!("nubo: the orchestrator is not built yet");
    std::process::exit(2);
}
