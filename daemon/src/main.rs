fn main() -> std::process::ExitCode {
    settled::cli::main()
}
