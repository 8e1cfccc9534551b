//! The native `lm-proxy-server` binary: everything lives in the library.

// mimalloc: the request path allocates many small, short-lived objects (JSON
// trees, header maps, futures); bench/RESULTS.md has the measured difference. Built
// with `no_thp`: transparent huge pages made idle RSS 18 MB instead of 11 MB and
// 1,000 open streams 91 MB instead of 62 MB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    lm_proxy::cli::main_native()
}
