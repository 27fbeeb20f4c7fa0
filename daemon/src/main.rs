#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

settled::jemalloc_options!();

fn main() -> std::process::ExitCode {
    settled::cli::main()
}
