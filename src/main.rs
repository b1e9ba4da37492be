//! `streamhub`: parse the command line, set up logging, start the server (or
//! run a client command), wait for a signal (SIGHUP reloads the TLS
//! certificate; SIGTERM or SIGINT stops), exit. Errors become exit codes
//! here and nowhere else: 0 success, 1 runtime failure, 2 bad usage.

use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

mod client;
mod mint;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use streamhub::config::{self, Config, RawArgs, SERVE_OPTIONS};
use streamhub::error::Error;
use streamhub::systemd::{self, Notifier};
use streamhub::App;

fn top_help() -> String {
    let mut out = String::from(
        "streamhub: a small realtime message server (gRPC ChatService + Server-Sent Events)\n\n\
         Usage: streamhub <COMMAND> [OPTIONS]\n\nCommands:\n  serve      run the server\n",
    );
    for (name, summary, _) in client::COMMANDS {
        out.push_str(&format!("  {name:<10} {summary}\n"));
    }
    out.push_str(&format!("  {:<10} {}\n", "token", mint::SUMMARY));
    out.push_str("\nRun 'streamhub <COMMAND> --help' for the options of a command.\n");
    out
}

fn serve(args: &[String]) -> Result<(), Error> {
    let raw = RawArgs::parse(SERVE_OPTIONS, args, |k| std::env::var(k).ok())?;
    if raw.help {
        print!(
            "{}",
            config::usage(
                "streamhub serve",
                "Run the streamhub server.",
                "",
                SERVE_OPTIONS
            )
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
    systemd::init_logging();
    // SIGHUP is taken before the server starts, so that a reload sent early
    // (a renewal hook racing a restart) cannot kill the process: its
    // default action is to terminate.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let (grpc_addr, http_addr) = (config.grpc.addr, config.http.addr);
    let app = App::start(config)?;
    let notifier = Notifier::from_env();
    if notifier.enabled() {
        // READY only once both ports really accept connections.
        accepts(grpc_addr, app.grpc_port())?;
        accepts(http_addr, app.http_port())?;
        notifier.notify("READY=1");
        if let Some(every) = systemd::watchdog_interval() {
            let watchdog = Notifier::from_env();
            app.start_watchdog(every, move || watchdog.notify("WATCHDOG=1"))?;
        }
    }
    for signal in signals.forever() {
        if signal != SIGHUP {
            log::info!("received signal {signal}");
            break;
        }
        // Certificate renewal: new connections get the new certificate,
        // open streams go on. (No RELOADING=1 to systemd: the unit's
        // ExecReload only sends the signal, and the reload is two small
        // file reads and a key check.)
        app.reload_tls();
    }
    notifier.notify("STOPPING=1");
    // A second SIGTERM or SIGINT while draining means "now"; a reload then
    // is pointless (the server is going) and must not count as one.
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    log::info!("SIGHUP while shutting down: ignored");
                    continue;
                }
                log::warn!("second signal: exiting at once");
                std::process::exit(1);
            }
        })?;
    app.shutdown();
    Ok(())
}

/// Connects once to a port this process listens on.
fn accepts(bound: SocketAddr, port: u16) -> Result<(), Error> {
    let mut addr = bound;
    addr.set_port(port);
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map(drop)
        .map_err(|e| Error::Io(format!("{addr} does not accept connections: {e}")))
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
        "token" => mint::run(rest),
        "bench" => Err(Error::Config(
            "the load tool is its own binary now: run 'streamhub-bench' (see BENCHMARKS.md)".into(),
        )),
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
