//! `streamhub`: parse the command line, set up logging, start the server (or
//! run a client command), wait for a signal, exit. Errors become exit codes
//! here and nowhere else: 0 success, 1 runtime failure, 2 bad usage.

use std::io::Write;
use std::process::ExitCode;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use streamhub::config::{self, Config, RawArgs, SERVE_OPTIONS};
use streamhub::error::Error;
use streamhub::grpc::client;
use streamhub::App;

fn top_help() -> String {
    let mut out = String::from(
        "streamhub: a small realtime message server (gRPC ChatService + Server-Sent Events)\n\n\
         Usage: streamhub <COMMAND> [OPTIONS]\n\nCommands:\n  serve      run the server\n",
    );
    for (name, summary, _) in client::COMMANDS {
        out.push_str(&format!("  {name:<10} {summary}\n"));
    }
    out.push_str("\nRun 'streamhub <COMMAND> --help' for the options of a command.\n");
    out
}

fn init_logging() {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.format(|buf, record| {
        let thread = std::thread::current();
        writeln!(
            buf,
            "{} {:<5} [{}] {}",
            buf.timestamp_millis(),
            record.level(),
            thread.name().unwrap_or("?"),
            record.args()
        )
    });
    builder.init();
}

fn serve(args: &[String]) -> Result<(), Error> {
    let raw = RawArgs::parse(SERVE_OPTIONS, args, |k| std::env::var(k).ok())?;
    if raw.help {
        print!(
            "{}",
            config::usage("serve", "Run the streamhub server.", "", SERVE_OPTIONS)
        );
        return Ok(());
    }
    if let Some(extra) = raw.positional.first() {
        return Err(Error::Config(format!("serve takes no argument '{extra}'")));
    }
    let config = Config::from_raw(&raw)?;
    if raw.switch("print-config") {
        print!("{}", config::print_config(&raw));
        return Ok(());
    }
    init_logging();
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let app = App::start(config)?;
    if let Some(signal) = signals.forever().next() {
        log::info!("received signal {signal}");
    }
    // A second signal while draining means "now".
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                log::warn!("second signal: exiting at once");
                std::process::exit(1);
            }
        })?;
    app.shutdown();
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        eprint!("{}", top_help());
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match command.as_str() {
        "serve" => serve(rest),
        "-h" | "--help" | "help" => {
            print!("{}", top_help());
            Ok(())
        }
        "-V" | "--version" => {
            println!("streamhub {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        other => match client::run(other, rest) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Config(format!(
                "unknown command '{other}' (see 'streamhub --help')"
            ))),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ Error::Config(_)) => {
            eprintln!("streamhub: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("streamhub: {e}");
            ExitCode::from(1)
        }
    }
}
