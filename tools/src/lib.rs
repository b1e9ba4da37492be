//! `streamhub-bench`: a load tool that can be pointed at streamhub or at any
//! server speaking `chat.ChatService` or Server-Sent Events.
//!
//! Scenarios:
//! - `unary`: SendMessage at a concurrency over N connections; req/s,
//!   latency percentiles, errors by status code.
//! - `fanout`: S subscribers (gRPC or SSE) on R rooms, P publishers at a
//!   fixed rate or flat out; deliveries/s, publish-to-receive latency (a
//!   timestamp travels in the content), and per subscriber the lost,
//!   duplicated and out-of-order messages.
//! - `hold`: N idle streams held open; with `--server-pid`, the server's
//!   memory, threads and files before and after, and per stream.
//! - `startup`: start a streamhub binary until it says READY; idle
//!   footprint.
//! - `grpc-body`: write a framed SendMessage request for `h2load -d`.
//!
//! No async runtime: gRPC goes through streamhub's blocking h2c client
//! (`streamhub::grpc::h2::client`, a reader thread per connection), and
//! every publisher, SSE subscriber and group of gRPC subscribers
//! (`--streams-per-thread`) is a named thread with a small stack
//! (`--stack-kib`), spawned here with `std::thread::Builder` (the server's
//! tracked spawner is for server threads). Thousands of connections need
//! as many file descriptors: raise `ulimit -n` first.
//!
//! The arithmetic ([`stats`]) and the protocol parsing ([`http`], [`sse`])
//! are pure and unit-tested; the scenario modules are the I/O around them.

pub mod fanout;
pub mod grpc;
pub mod grpc_web;
pub mod hold;
pub mod http;
pub mod proc;
pub mod publish_cost;
pub mod report;
pub mod sse;
pub mod startup;
pub mod stats;
pub mod unary;

use std::time::Duration;

use streamhub::config::{usage, OptSpec, RawArgs};
use streamhub::error::Error;

const fn opt(flag: &'static str, default: &'static str, help: &'static str) -> OptSpec {
    OptSpec {
        flag,
        env: "",
        default,
        help,
        switch: false,
        repeatable: false,
    }
}

const fn switch(flag: &'static str, help: &'static str) -> OptSpec {
    OptSpec {
        switch: true,
        ..opt(flag, "", help)
    }
}

const SERVER: OptSpec = opt(
    "server",
    "127.0.0.1:50051",
    "gRPC address (host:port) of the server under test",
);
const SSE_URL: OptSpec = opt(
    "sse-url",
    "http://127.0.0.1:8080/events?room={room}",
    "URL template of an event stream; {room} is replaced",
);
const JSON: OptSpec = switch("json", "print the result as JSON instead of a table");
const QUIET: OptSpec = switch("quiet", "no progress line on stderr");
const TIMEOUT: OptSpec = opt(
    "timeout-secs",
    "10",
    "deadline of connecting and of each call",
);
const PROTOCOL: OptSpec = opt(
    "protocol",
    "grpc",
    "grpc, sse, or grpc-web (fanout: SubscribeMessages over gRPC-Web at --grpc-web-url)",
);
const STACK: OptSpec = opt(
    "stack-kib",
    "64",
    "stack of each subscriber thread of the load tool",
);

/// Options of `streamhub-bench unary`.
pub const UNARY_OPTIONS: &[OptSpec] = &[
    SERVER,
    opt("connections", "4", "HTTP/2 connections"),
    opt(
        "concurrency",
        "64",
        "calls in flight in all (spread over the connections)",
    ),
    opt("duration-secs", "10", "how long to measure"),
    opt(
        "warmup-secs",
        "1",
        "calls in the first seconds are not counted",
    ),
    opt("size", "100", "content bytes per message"),
    opt("room", "bench", "room to publish to"),
    opt("user", "bench", "user name to publish as"),
    SERVER_PID,
    TIMEOUT,
    JSON,
    QUIET,
];

/// Options of `streamhub-bench fanout`.
pub const FANOUT_OPTIONS: &[OptSpec] = &[
    PROTOCOL,
    SERVER,
    SSE_URL,
    opt(
        "grpc-web-url",
        "http://127.0.0.1:8080",
        "origin of the HTTP port that serves gRPC-Web (--protocol grpc-web)",
    ),
    opt(
        "publish-via",
        "grpc",
        "grpc (SendMessage to --server) or http (POST to --publish-url)",
    ),
    opt(
        "publish-url",
        "http://127.0.0.1:8080/messages",
        "URL template to POST messages to; {room} is replaced",
    ),
    opt(
        "publish-body",
        "json",
        "json ({\"room\",\"user\",\"content\"}) or raw (the content as text/plain)",
    ),
    opt("subscribers", "100", "subscribers in all"),
    opt("rooms", "1", "rooms the subscribers are spread over"),
    opt(
        "room-prefix",
        "bench",
        "rooms are called PREFIX-0, PREFIX-1, ...",
    ),
    opt("publishers", "1", "publisher threads"),
    opt(
        "rate",
        "0",
        "messages per second from all publishers together; 0: flat out",
    ),
    opt(
        "window",
        "512",
        "flat out: publishers pause while the slowest subscriber is this many messages behind (0: never pause)",
    ),
    opt(
        "messages",
        "0",
        "stop after this many messages per publisher (0: run for --duration-secs)",
    ),
    opt("duration-secs", "10", "how long to publish"),
    opt("size", "100", "content bytes per message"),
    opt(
        "connections",
        "0",
        "gRPC connections for the subscribers (0: one per 100)",
    ),
    opt(
        "drain-secs",
        "10",
        "after publishing, how long to wait for the last deliveries",
    ),
    SERVER_PID,
    TIMEOUT,
    opt(
        "streams-per-thread",
        "100",
        "gRPC subscriber streams one load-tool thread reads (1: a thread per stream, as with SSE)",
    ),
    STACK,
    JSON,
    QUIET,
];

/// Options of `streamhub-bench hold`.
pub const HOLD_OPTIONS: &[OptSpec] = &[
    PROTOCOL,
    SERVER,
    SSE_URL,
    opt("streams", "1000", "idle streams to open and hold"),
    opt("room", "bench-hold", "room every stream subscribes to"),
    opt(
        "connections",
        "0",
        "gRPC connections to spread the streams over (0: one per 200)",
    ),
    opt("duration-secs", "10", "how long to hold them once open"),
    opt(
        "server-pid",
        "",
        "process id of the server, to read its memory, threads and files",
    ),
    opt("openers", "8", "threads opening streams in parallel"),
    TIMEOUT,
    JSON,
    QUIET,
];

/// Options of `streamhub-bench startup`.
pub const STARTUP_OPTIONS: &[OptSpec] = &[
    opt(
        "binary",
        "",
        "the streamhub binary to start (default: this one)",
    ),
    opt("runs", "10", "starts to measure"),
    opt(
        "settle-ms",
        "1000",
        "after READY, wait this long before reading the idle footprint",
    ),
    OptSpec {
        repeatable: true,
        ..opt("server-arg", "", "extra argument for 'serve' (repeatable)")
    },
    JSON,
];

/// Options of `streamhub-bench grpc-body`.
pub const GRPC_BODY_OPTIONS: &[OptSpec] = &[
    opt("out", "", "file to write (required)"),
    opt("size", "100", "content bytes"),
    opt("room", "bench", "room of the message"),
    opt("user", "bench", "user of the message"),
];

/// Options of `streamhub-bench publish-cost`.
pub const PUBLISH_COST_OPTIONS: &[OptSpec] = &[
    opt(
        "subscribers",
        "1,1000,10000",
        "subscriber counts to measure, each on a fresh hub",
    ),
    opt("rate", "100", "publishes per second"),
    opt("duration-secs", "3", "how long to publish at each count"),
    opt("size", "100", "content bytes per message"),
    opt(
        "priority",
        "idle",
        "CPU priority of the subscriber threads: idle, low or normal",
    ),
];

/// Scenario name, summary, option table.
pub const SCENARIOS: &[(&str, &str, &[OptSpec])] = &[
    (
        "unary",
        "SendMessage load: req/s, latency percentiles, errors by status",
        UNARY_OPTIONS,
    ),
    (
        "fanout",
        "subscribers and publishers on rooms: deliveries/s, latency, loss, order",
        FANOUT_OPTIONS,
    ),
    (
        "hold",
        "hold idle streams: the server's memory, threads and files per stream",
        HOLD_OPTIONS,
    ),
    (
        "startup",
        "time from start to READY, idle memory and threads",
        STARTUP_OPTIONS,
    ),
    (
        "publish-cost",
        "what a publish costs on the hub itself at 1, 1,000, 10,000 subscribers",
        PUBLISH_COST_OPTIONS,
    ),
    (
        "grpc-body",
        "write a framed SendMessage request for h2load -d",
        GRPC_BODY_OPTIONS,
    ),
];

/// One line for the top-level help.
pub const SUMMARY: &str = "load-test a server: unary, fanout, hold, startup";

fn help() -> String {
    let mut out = String::from(
        "Measure a server that speaks chat.ChatService or Server-Sent Events.\n\n\
         Usage: streamhub-bench <SCENARIO> [OPTIONS]\n\nScenarios:\n",
    );
    for (name, summary, _) in SCENARIOS {
        out.push_str(&format!("  {name:<10} {summary}\n"));
    }
    out.push_str(
        "\nRun 'streamhub-bench <SCENARIO> --help' for its options.\n\
         Many streams need many file descriptors: run 'ulimit -n 65536' first.\n",
    );
    out
}

/// Runs `streamhub-bench <args>`.
pub fn run(args: &[String]) -> Result<(), Error> {
    let Some(scenario) = args.first() else {
        print!("{}", help());
        return Ok(());
    };
    if matches!(scenario.as_str(), "-h" | "--help" | "help") {
        print!("{}", help());
        return Ok(());
    }
    let Some((name, summary, specs)) = SCENARIOS.iter().find(|(n, _, _)| n == scenario) else {
        return Err(Error::Config(format!(
            "unknown scenario '{scenario}' (see 'streamhub-bench --help')"
        )));
    };
    if let Some(flag) = dropped_flag(name, &args[1..]) {
        return Err(Error::Config(format!("--{flag} is gone: {DROPPED_NOTE}")));
    }
    let raw = RawArgs::parse(specs, &args[1..], |_| None)?;
    if raw.help {
        print!(
            "{}",
            usage(&format!("streamhub-bench {name}"), summary, "", specs)
        );
        if GRPC_SCENARIOS.contains(name) {
            println!("\nGone: --client-threads: {DROPPED_NOTE}.");
        }
        return Ok(());
    }
    if let Some(extra) = raw.positional.first() {
        return Err(Error::Config(format!(
            "bench {name} takes no argument '{extra}'"
        )));
    }
    let report = match *name {
        "unary" => unary::run(&unary::UnaryPlan::from_raw(&raw)?)?.report(),
        "fanout" => {
            let plan = fanout::FanoutPlan::from_raw(&raw)?;
            warn_about_fd_limit(plan.sockets());
            fanout::run(&plan)?.report()
        }
        "hold" => {
            let plan = hold::HoldPlan::from_raw(&raw)?;
            warn_about_fd_limit(plan.sockets());
            hold::run(&plan)?.report()
        }
        "startup" => startup::run(&startup::StartupPlan::from_raw(&raw)?)?.report(),
        "publish-cost" => {
            publish_cost::run(&publish_cost::PublishCostPlan::from_raw(&raw)?)?.report()
        }
        _ => {
            let out = raw.string("out");
            if out.is_empty() {
                return Err(Error::Config("--out: a file name is required".into()));
            }
            let size = raw.number("size", 1, 64 << 20)? as usize;
            let content = "x".repeat(size);
            let body = grpc::framed_send_request(&raw.string("room"), &raw.string("user"), content);
            std::fs::write(&out, &body)
                .map_err(|e| Error::Io(format!("--out: cannot write {out}: {e}")))?;
            eprintln!("wrote {} bytes to {out}", body.len());
            return Ok(());
        }
    };
    if raw.switch("json") {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.json).expect("JSON values always print")
        );
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// Scenarios that took grpcio's `--client-threads`.
const GRPC_SCENARIOS: &[&str] = &["unary", "fanout", "hold"];
/// Why `--client-threads` went, for its help and its error.
const DROPPED_NOTE: &str = "it set grpcio's completion-queue threads, and the load tool no longer \
     uses grpcio: its h2c client reads each connection on a thread of its own \
     (fanout: see --streams-per-thread)";

/// `client-threads` when a gRPC scenario is given it (any form).
fn dropped_flag(scenario: &str, args: &[String]) -> Option<&'static str> {
    let given = args
        .iter()
        .any(|a| a == "--client-threads" || a.starts_with("--client-threads="));
    (given && GRPC_SCENARIOS.contains(&scenario)).then_some("client-threads")
}

/// Warns when this process may run out of file descriptors.
fn warn_about_fd_limit(needed: usize) {
    if let Some(limit) = proc::open_files_limit() {
        if (limit as usize) < needed {
            eprintln!(
                "warning: this run needs about {needed} file descriptors but 'ulimit -n' is {limit}; \
                 raise it (ulimit -n 65536) or expect connection errors"
            );
        }
    }
}

/// `--server-pid`, checked to be a process whose `/proc` entry is readable.
fn server_pid(raw: &RawArgs) -> Result<Option<u32>, Error> {
    if raw.string("server-pid").is_empty() {
        return Ok(None);
    }
    let pid = raw.number("server-pid", 1, u64::from(u32::MAX))? as u32;
    if proc::Footprint::of(pid).is_none() {
        return Err(Error::Config(format!(
            "--server-pid: cannot read /proc/{pid} (no such process, or not ours)"
        )));
    }
    Ok(Some(pid))
}

const SERVER_PID: OptSpec = opt(
    "server-pid",
    "",
    "process id of the server, to report its CPU time and context switches",
);

/// Reads a duration in whole seconds.
fn secs(raw: &RawArgs, flag: &str, min: u64) -> Result<Duration, Error> {
    raw.secs(flag, min, 7 * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_has_help_and_valid_defaults() {
        for (name, summary, specs) in SCENARIOS {
            let text = usage(&format!("streamhub-bench {name}"), summary, "", specs);
            assert!(text.contains(&format!("streamhub-bench {name}")));
            let raw = RawArgs::parse(specs, &[], |_| None).unwrap();
            let ok = match *name {
                "unary" => unary::UnaryPlan::from_raw(&raw).is_ok(),
                "fanout" => fanout::FanoutPlan::from_raw(&raw).is_ok(),
                "hold" => hold::HoldPlan::from_raw(&raw).is_ok(),
                "startup" => startup::StartupPlan::from_raw(&raw).is_ok(),
                "publish-cost" => publish_cost::PublishCostPlan::from_raw(&raw).is_ok(),
                _ => true,
            };
            assert!(ok, "defaults of {name} do not validate");
        }
    }

    #[test]
    fn bad_values_name_the_flag() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let raw = RawArgs::parse(FANOUT_OPTIONS, &args(&["--protocol", "ws"]), |_| None).unwrap();
        let e = fanout::FanoutPlan::from_raw(&raw).unwrap_err().to_string();
        assert!(e.starts_with("--protocol"), "{e}");
        let raw =
            RawArgs::parse(FANOUT_OPTIONS, &args(&["--sse-url", "https://x"]), |_| None).unwrap();
        let raw_sse = RawArgs::parse(
            FANOUT_OPTIONS,
            &args(&["--protocol", "sse", "--sse-url", "https://x"]),
            |_| None,
        )
        .unwrap();
        assert!(fanout::FanoutPlan::from_raw(&raw).is_ok(), "unused URL");
        let e = fanout::FanoutPlan::from_raw(&raw_sse)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--sse-url"), "{e}");
        let raw = RawArgs::parse(UNARY_OPTIONS, &args(&["--concurrency", "2"]), |_| None).unwrap();
        let e = unary::UnaryPlan::from_raw(&raw).unwrap_err().to_string();
        assert!(e.contains("--concurrency"), "{e}");
        assert!(run(&args(&["nope"]))
            .unwrap_err()
            .to_string()
            .contains("nope"));
        let e = run(&args(&["fanout", "--client-threads", "2"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--client-threads is gone"), "{e}");
        assert_eq!(
            dropped_flag("unary", &args(&["--client-threads=4"])),
            Some("client-threads")
        );
        assert_eq!(
            dropped_flag("startup", &args(&["--client-threads=4"])),
            None
        );
    }
}
