//! The native `lm-proxy-server` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    lm_proxy::cli::main_native()
}
