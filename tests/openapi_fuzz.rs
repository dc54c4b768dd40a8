//! The OpenAPI document against the server that serves it: a real OpenAPI fuzzer
//! (schemathesis, every check) runs against the example server for a bounded time and must find
//! nothing, and the document must be valid OpenAPI 3.1 (openapi-spec-validator).
//!
//! Both tools come from PyPI, pinned, into a virtual environment under the target directory
//! (`target/openapi-fuzz-venv`), created on first use with `python3 -m venv`: a machine without
//! python3 or without access to PyPI fails here, loudly. `TRIGGERS_FUZZ_VENV` points at an
//! existing environment instead. The server is the example binary `cargo test` builds
//! (`target/<profile>/examples/server`), on 127.0.0.1 with a temporary SQLite database and no
//! delivery workers: fuzzed webhook URLs name arbitrary hosts, which must never be contacted.
//!
//! Settings of the run (documented in docs/http.md, "The contract"): the key-rotation
//! operation is excluded (it would revoke the key the fuzzer uses); the limit of endpoints per
//! organization is raised (the fuzzer creates hundreds, and the 422 at the limit is a correct
//! answer it cannot foresee); the `ensure_resource_availability` check is off, because the
//! link it follows from `POST /api/ack` to `POST /api/ack/{id}` is one the tool infers from
//! the field name `ids` (the document has none, and acknowledging creates nothing); and a hook
//! (`tests/openapi_fuzz_hooks.py`) makes each valid `Idempotency-Key` it sends unique, since a
//! key reused with another event is rightly 422 and the fuzzer cannot know its earlier keys.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// Pinned tool versions (bump deliberately: a newer fuzzer may find new things).
const SCHEMATHESIS: &str = "schemathesis==4.32.5";
const SPEC_VALIDATOR: &str = "openapi-spec-validator==0.9.0";

/// How long the fuzzer runs, in seconds (`TRIGGERS_FUZZ_SECONDS` overrides).
const FUZZ_SECONDS: u32 = 60;

/// One creation of the environment at a time (the two tests share it).
static VENV: Mutex<()> = Mutex::new(());

/// The directory cargo put this test binary in: `target/<profile>/deps`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// The tools' virtual environment, created (and filled) if missing.
fn venv() -> PathBuf {
    if let Some(dir) = std::env::var_os("TRIGGERS_FUZZ_VENV") {
        return PathBuf::from(dir);
    }
    let _one = VENV.lock().unwrap_or_else(|e| e.into_inner());
    let dir = profile_dir().parent().unwrap().join("openapi-fuzz-venv");
    let ready = dir.join(".installed");
    if std::fs::read_to_string(&ready).ok().as_deref()
        == Some(&format!("{SCHEMATHESIS} {SPEC_VALIDATOR}"))
    {
        return dir;
    }
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&dir), "python3 -m venv");
    run(
        Command::new(dir.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            SCHEMATHESIS,
            SPEC_VALIDATOR,
        ]),
        "pip install (needs PyPI)",
    );
    std::fs::write(&ready, format!("{SCHEMATHESIS} {SPEC_VALIDATOR}")).unwrap();
    dir
}

/// The example server as a child process; killed when dropped.
struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start() -> Self {
        let bin = profile_dir().join("examples/server");
        {
            // `cargo test` builds the examples, `cargo test --test openapi_fuzz` does not (and
            // would fuzz a stale binary): make sure it is current (a no-op when it is).
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = Command::new(cargo);
            build.args(["build", "--example", "server", "--no-default-features"]);
            // The features this test was built with: the same build of the example, no flip.
            let features: Vec<&str> = [
                ("sqlite", cfg!(feature = "sqlite")),
                ("postgres", cfg!(feature = "postgres")),
                ("http", cfg!(feature = "http")),
                ("conformance", cfg!(feature = "conformance")),
            ]
            .into_iter()
            .filter_map(|(name, on)| on.then_some(name))
            .collect();
            build.args(["--features", &features.join(",")]);
            if profile_dir().ends_with("release") {
                build.arg("--release");
            }
            let status = build.status().unwrap();
            assert!(status.success() && bin.exists(), "building {} failed", bin.display());
        }
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(&bin)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TRIGGERS_LISTEN", "127.0.0.1:0")
            .env("DATABASE_URL", format!("sqlite://{}", dir.path().join("fuzz.db").display()))
            .env("TRIGGERS_WORKERS", "0")
            .env("TRIGGERS_TIER_LIMITS", "free=1000000000,enterprise=1000000000")
            .env("TRIGGERS_MAX_ENDPOINTS", "100000")
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in the server's first line: {line:?}"))
            .to_owned();
        Self { child, addr, _dir: dir }
    }

    /// The body of one request (raw HTTP/1.1 over a fresh connection: nothing else needed).
    fn request(&self, method: &str, path: &str, body: &str) -> String {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        assert!(head.starts_with("HTTP/1.1 2"), "{method} {path}: {head}");
        body.to_owned()
    }

    /// A fresh organization's API key.
    fn key(&self) -> String {
        let body = r#"{"organization_name":"fuzz","tier":"enterprise"}"#;
        let answer = self.request("POST", "/api/keys/generate", body);
        let value: serde_json::Value = serde_json::from_str(&answer).unwrap();
        value["api_key"].as_str().unwrap().to_owned()
    }
}

fn report(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} found problems ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_document_is_valid_openapi_3_1() {
    let venv = venv();
    let server = Server::start();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), server.request("GET", "/openapi.json", "")).unwrap();
    let out =
        Command::new(venv.join("bin/openapi-spec-validator")).arg(file.path()).output().unwrap();
    report("openapi-spec-validator", &out);
}

#[test]
fn a_fuzzer_finds_the_server_and_its_document_in_agreement() {
    let venv = venv();
    let server = Server::start();
    let key = server.key();
    let seconds = std::env::var("TRIGGERS_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(FUZZ_SECONDS);
    // A fixed seed by default, so that CI replays the same inputs (a finding is reproducible,
    // never a coin toss); `TRIGGERS_FUZZ_SEED` explores others.
    let seed = std::env::var("TRIGGERS_FUZZ_SEED").unwrap_or_else(|_| "20261202".to_owned());
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi_fuzz_hooks.py");
    // The fuzzer keeps a cache of earlier findings in its working directory: a fresh one per
    // run, so no run replays another's and nothing lands in the source tree.
    let workdir = tempfile::tempdir().unwrap();
    let out = Command::new(venv.join("bin/schemathesis"))
        .current_dir(workdir.path())
        .env("SCHEMATHESIS_HOOKS", &hooks)
        .args(["run", &format!("http://{}/openapi.json", server.addr)])
        .args(["--checks", "all", "--exclude-checks", "ensure_resource_availability"])
        .args(["--exclude-operation-id", "rotateKey"])
        .args(["--header", &format!("X-API-Key: {key}")])
        .args(["--max-time", &seconds.to_string(), "--no-color", "--wait-for-schema", "10"])
        .args(["--seed", &seed])
        .output()
        .unwrap();
    report("schemathesis", &out);
}
