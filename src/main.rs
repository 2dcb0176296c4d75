use clap::Parser;
use pgdrill::backup::exit;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // wal-fetch runs as restore_command: every failure but "not found"
    // (74) must exit above 125, or PostgreSQL takes it for the end of the
    // archive and promotes a half-restored server. That includes a typo in
    // its arguments, a runtime that cannot start and a panic.
    let failure = if pgdrill::cli::runs_wal_fetch(&args) {
        std::panic::set_hook(Box::new(|info| {
            eprintln!("pgdrill: internal error: {info}");
            std::process::exit(exit::FETCH_FAILED);
        }));
        exit::FETCH_FAILED
    } else {
        exit::FAILURE
    };
    let cli = match pgdrill::cli::Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() && failure == exit::FETCH_FAILED => {
            let _ = e.print();
            std::process::exit(failure);
        }
        Err(e) => e.exit(),
    };
    let mut filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        // rPGP logs key material at debug level: never let it through.
        .add_directive("pgp=warn".parse().expect("a valid directive"));
    // tokio-postgres logs every server notice at info, such as the
    // "terminating connection" of a restore that aborts as a drill expects;
    // asked for by name, they show.
    if !cli.log.contains("tokio_postgres") {
        filter = filter.add_directive("tokio_postgres=warn".parse().expect("a valid directive"));
    }
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
            std::process::exit(failure);
        }
    };
    let format = cli.error_format;
    let code = match runtime.block_on(pgdrill::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", pgdrill::cli::error_line(&e, format, failure));
            failure
        }
    };
    // Do not wait for background tasks (progress reporters, idle pools).
    runtime.shutdown_background();
    std::process::exit(code);
}
