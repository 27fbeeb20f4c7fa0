#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's `malloc_conf` (its symbols carry the `_rjem_` prefix): [`settled::JEMALLOC_CONF`].
#[export_name = "_rjem_malloc_conf"]
#[allow(non_upper_case_globals)]
pub static malloc_conf: Option<&'static std::ffi::c_char> = Some(
    // SAFETY: the first byte of a static NUL-terminated string, which jemalloc only reads.
    unsafe { &*settled::JEMALLOC_CONF.as_ptr() },
);

fn main() -> std::process::ExitCode {
    settled::cli::main()
}
