//! Child server processes: this test binary re-executed with `--exact <module>::child_server`,
//! which serves on 127.0.0.1:0 and announces its port on stdout. For tests that kill a
//! server, read a server's own memory, or run two servers on one database.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// The line a child prints once it listens: this prefix and the port.
const PORT_LINE: &str = "TRIGGERS_IT_PORT=";

/// Kills the child process when dropped (also when the test fails).
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Called by a child once `listener` is bound: tells [`spawn`] where it listens.
pub fn announce(listener: &tokio::net::TcpListener) {
    println!("{PORT_LINE}{}", listener.local_addr().unwrap().port());
}

/// Runs the test `test` (e.g. `"crash::child_server"`) of this binary in a child process
/// with `env` set; returns its guard and its address once it listens.
pub fn spawn<K, V>(test: &str, env: impl IntoIterator<Item = (K, V)>) -> (ChildGuard, SocketAddr)
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .envs(env)
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = ChildGuard(child);
    let mut lines = BufReader::new(stdout).lines();
    let port = loop {
        let line = lines.next().expect("the child exited before listening").unwrap();
        // libtest may print "test x::child_server ... " on the same line first.
        if let Some((_, port)) = line.split_once(PORT_LINE) {
            break port.trim().parse::<u16>().unwrap();
        }
    };
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (guard, SocketAddr::from(([127, 0, 0, 1], port)))
}
