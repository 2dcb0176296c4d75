use clap::Parser;

fn main() {
    let cli = pgdrill::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        // rPGP logs key material at debug level: never let it through.
        .add_directive("pgp=warn".parse().expect("a valid directive"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgdrill: cannot start the async runtime: {e}");
            std::process::exit(pgdrill::backup::exit::FAILURE);
        }
    };
    let code = match runtime.block_on(pgdrill::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgdrill: {e:#}");
            pgdrill::backup::exit::FAILURE
        }
    };
    // Do not wait for background tasks (progress reporters, idle pools).
    runtime.shutdown_background();
    std::process::exit(code);
}
