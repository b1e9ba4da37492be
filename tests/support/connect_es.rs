//! Connect-ES, the real gRPC-Web client the browser test runs: installed
//! from npm (pinned versions), its `chat_pb.js` generated from our proto
//! with Debian's `protoc` and `protoc-gen-es`, and bundled with esbuild
//! with `tests/browser/connect-es.js` into one script. Everything lives in
//! `.cache/connect-es` (gitignored) and is made again only when the pins,
//! the proto or the script change: the first run takes seconds (npm), the
//! next ones nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The npm packages, pinned.
const PACKAGES: &[&str] = &[
    "@connectrpc/connect@2.3.0",
    "@connectrpc/connect-web@2.3.0",
    "@bufbuild/protobuf@2.17.0",
    "@bufbuild/protoc-gen-es@2.17.0",
    "esbuild@0.28.2",
];

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the bundle is made from, as one string: a change makes it again.
fn inputs(root: &Path) -> String {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    format!(
        "{}\n{}\n{}",
        PACKAGES.join(" "),
        read("proto/chat.proto"),
        read("tests/browser/connect-es.js")
    )
}

/// The bundled test script, or `None` (the test skips) when node, npm or
/// protoc is missing, unless `STREAMHUB_REQUIRE_BROWSER` is set.
pub fn bundle() -> Option<String> {
    if !(have("node") && have("npm") && have("protoc")) {
        assert!(
            std::env::var_os("STREAMHUB_REQUIRE_BROWSER").is_none(),
            "STREAMHUB_REQUIRE_BROWSER is set but node, npm or protoc is missing"
        );
        eprintln!("skipped: node, npm or protoc is not installed (make test installs them)");
        return None;
    }
    let root = super::root();
    let dir: PathBuf = root.join(".cache/connect-es");
    let stamp = dir.join("inputs.txt");
    let out = dir.join("bundle.js");
    let want = inputs(&root);
    if out.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Some(std::fs::read_to_string(out).unwrap());
    }
    std::fs::create_dir_all(dir.join("gen")).unwrap();
    run(Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--loglevel=error",
        ])
        .arg("--prefix")
        .arg(&dir)
        .args(PACKAGES));
    run(Command::new("protoc")
        .arg("-I")
        .arg(root.join("proto"))
        .arg(format!(
            "--plugin=protoc-gen-es={}",
            dir.join("node_modules/.bin/protoc-gen-es").display()
        ))
        .arg(format!("--es_out={}", dir.join("gen").display()))
        .arg("--es_opt=target=js")
        .arg(root.join("proto/chat.proto")));
    std::fs::copy(
        root.join("tests/browser/connect-es.js"),
        dir.join("entry.js"),
    )
    .unwrap();
    run(Command::new(dir.join("node_modules/.bin/esbuild"))
        .current_dir(&dir)
        .args([
            "entry.js",
            "--bundle",
            "--format=iife",
            "--log-level=warning",
        ])
        .arg("--outfile=bundle.js"));
    std::fs::write(&stamp, want).unwrap();
    Some(std::fs::read_to_string(out).unwrap())
}
