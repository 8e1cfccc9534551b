//! The native `lm-proxy-server` binary: everything lives in the library.

// mimalloc: the request path allocates many small, short-lived objects (JSON
// trees, header maps, futures); bench/RESULTS.md has the measured difference.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    lm_proxy::cli::main_native()
}
