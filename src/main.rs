//! The native `lm-proxy-server` binary: everything lives in the library.

// mimalloc (src/allocator.rs): the request path allocates many small, short-lived
// objects; bench/RESULTS.md has the measured difference.
#[global_allocator]
static ALLOCATOR: lm_proxy::allocator::Allocator = lm_proxy::allocator::Allocator;

fn main() -> std::process::ExitCode {
    lm_proxy::cli::main_native()
}
