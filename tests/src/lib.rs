//! petrel-tests: the harness for petrel's end-to-end tests, which run the real `petrel`
//! binary on real guests: petrel's own test guest (tier 1) and Debian's kernels (tier 2).
//!
//! Tests that need /dev/kvm fail, loudly, when it is missing: a skipped end-to-end test
//! would look like a passing one.
//!
//! ```no_run
//! use petrel_tests::{require_kvm, test_guest, Petrel};
//!
//! require_kvm();
//! let run = Petrel::new().kernel(test_guest()).cmdline("petrel.scenario=hello").run();
//! assert_eq!(run.code, Some(0));
//! assert!(run.stdout.contains("HELLO"));
//! ```

pub mod netns;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a tier-1 run may take before the test calls it a hang.
pub const TIER1_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of the `petrel` binary under test: `$PETREL_BIN`, or the one cargo built next to
/// this test executable.
pub fn petrel_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("PETREL_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    // target/<profile>/deps/<test> → target/<profile>/petrel
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let candidate = profile_dir.join("petrel");
    assert!(
        candidate.is_file(),
        "petrel binary not found at {}: run the tests with `cargo test --workspace` (which builds it) or set PETREL_BIN",
        candidate.display()
    );
    candidate
}

/// The path of petrel's freestanding test guest, built by this crate's build script.
pub fn test_guest() -> PathBuf {
    PathBuf::from(env!("PETREL_TEST_GUEST"))
}

/// Panics with a clear message unless /dev/kvm can be opened for reading and writing.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("this test needs /dev/kvm, which cannot be opened: {e}");
    }
}

/// A temporary directory removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory whose name includes `tag`.
    pub fn new(tag: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("petrel-test-{}-{}-{}", tag, std::process::id(), n));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        Self { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// How a petrel run ended.
#[derive(Debug)]
pub struct RunOutput {
    /// The exit code, or `None` if petrel died from a signal.
    pub code: Option<i32>,
    /// Everything petrel wrote to stdout (the guest console).
    pub stdout: String,
    /// Everything petrel wrote to stderr (its log and errors).
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl RunOutput {
    /// Lines of stdout that start with `prefix`.
    pub fn lines_starting_with(&self, prefix: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|line| line.starts_with(prefix))
            .collect()
    }

    /// The non-empty lines petrel wrote to stderr.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// A description for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// The value of `key=` in a guest line such as `NET sent frames=16 bytes=1600`; panics if the
/// line has no such field.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// The first line of `stdout` that starts with `prefix`; panics, showing `stdout`, if none
/// does.
pub fn line_starting<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{stdout}"))
}

/// A `petrel run` command line under construction.
#[derive(Debug, Clone)]
pub struct Petrel {
    args: Vec<OsString>,
    timeout: Duration,
    netns: Option<String>,
}

impl Default for Petrel {
    fn default() -> Self {
        Self::new()
    }
}

impl Petrel {
    /// `petrel run` with no arguments yet.
    pub fn new() -> Self {
        Self {
            args: vec!["run".into()],
            timeout: TIER1_TIMEOUT,
            netns: None,
        }
    }

    /// Adds raw arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// `--kernel PATH`.
    pub fn kernel(self, path: impl AsRef<Path>) -> Self {
        self.args(["--kernel".into(), path.as_ref().as_os_str().to_owned()])
    }

    /// `--cmdline TEXT`.
    pub fn cmdline(self, text: &str) -> Self {
        self.args(["--cmdline", text])
    }

    /// Runs petrel inside network namespace `ns` (`ip netns exec`).
    pub fn in_netns(mut self, ns: &netns::NetNs) -> Self {
        self.netns = Some(ns.name().to_string());
        self
    }

    /// How long to wait before killing petrel and failing.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn command(&self) -> Command {
        let mut command = match &self.netns {
            // `ip netns exec` execs petrel, so the child's pid is petrel's (signals reach it).
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(petrel_bin());
                command
            }
            None => Command::new(petrel_bin()),
        };
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs petrel to completion; panics if it outlives the timeout (after killing it).
    pub fn run(&self) -> RunOutput {
        let start = Instant::now();
        let mut child = self.command().spawn().expect("spawn petrel");
        let stdout = drain(child.stdout.take().expect("piped stdout"));
        let stderr = drain(child.stderr.take().expect("piped stderr"));
        let status = wait_with_timeout(&mut child, self.timeout);
        let elapsed = start.elapsed();
        let stdout = stdout.join().expect("stdout reader");
        let stderr = stderr.join().expect("stderr reader");
        match status {
            Some(status) => RunOutput {
                code: status.code(),
                stdout,
                stderr,
                elapsed,
            },
            None => panic!(
                "petrel did not exit within {:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
                self.timeout
            ),
        }
    }

    /// Runs petrel until every pattern has appeared on stdout (in any order), then sends
    /// SIGTERM and waits for it to exit. Panics if the patterns do not all appear within the
    /// timeout.
    pub fn run_until(&self, patterns: &[&str]) -> RunOutput {
        let mut running = self.spawn();
        let missing = running.wait_for(patterns);
        let output = running.terminate();
        assert!(
            missing.is_empty(),
            "petrel did not print {missing:?} within {:?}\n{}",
            self.timeout,
            output.describe()
        );
        output
    }

    /// Starts petrel and returns while it runs, so a test can act on what the guest prints.
    pub fn spawn(&self) -> Running {
        let start = Instant::now();
        let mut child = self.command().spawn().expect("spawn petrel");
        let stderr = drain(child.stderr.take().expect("piped stderr"));
        let (lines_tx, lines) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if lines_tx
                            .send(String::from_utf8_lossy(&line).into_owned())
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });
        Running {
            child,
            lines,
            reader: Some(reader),
            stderr: Some(stderr),
            seen: String::new(),
            start,
            timeout: self.timeout,
        }
    }
}

/// A petrel process started by [`Petrel::spawn`].
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    stderr: Option<std::thread::JoinHandle<String>>,
    seen: String,
    start: Instant,
    timeout: Duration,
}

impl Running {
    /// Waits until every pattern has appeared in a line of stdout (in any order) or the
    /// run's timeout has passed; returns the patterns that did not appear.
    pub fn wait_for<'p>(&mut self, patterns: &[&'p str]) -> Vec<&'p str> {
        let mut missing: Vec<&str> = patterns.to_vec();
        missing.retain(|p| !self.seen.lines().any(|line| line.contains(p)));
        while !missing.is_empty() {
            let left = self.timeout.saturating_sub(self.start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    missing.retain(|p| !line.contains(p));
                    self.seen.push_str(&line);
                }
                Err(_) => break,
            }
        }
        missing
    }

    /// Like [`wait_for`](Self::wait_for), but kills petrel and panics with everything it
    /// printed if a pattern does not appear.
    pub fn expect(&mut self, patterns: &[&str]) {
        let missing = self.wait_for(patterns);
        if !missing.is_empty() {
            let timeout = self.timeout;
            let output = self.kill();
            panic!(
                "petrel did not print {missing:?} within {timeout:?}\n{}",
                output.describe()
            );
        }
    }

    /// What petrel printed on stdout so far (complete lines).
    pub fn stdout(&self) -> &str {
        &self.seen
    }

    /// Sends SIGTERM and waits (up to 10 s) for petrel to exit.
    pub fn terminate(mut self) -> RunOutput {
        // SAFETY: sending SIGTERM to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = wait_with_timeout(&mut self.child, Duration::from_secs(10));
        let stopped = status.is_some();
        let output = self.collect(status);
        assert!(
            stopped,
            "petrel did not stop after SIGTERM\n{}",
            output.describe()
        );
        output
    }

    /// Waits for petrel to exit by itself within the run's timeout; panics (after killing it)
    /// if it does not.
    pub fn wait(mut self) -> RunOutput {
        let left = self.timeout.saturating_sub(self.start.elapsed());
        let status = wait_with_timeout(&mut self.child, left);
        let timeout = self.timeout;
        let exited = status.is_some();
        let output = self.collect(status);
        assert!(
            exited,
            "petrel did not exit within {timeout:?}\n{}",
            output.describe()
        );
        output
    }

    fn kill(&mut self) -> RunOutput {
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        self.collect(status)
    }

    fn collect(&mut self, status: Option<std::process::ExitStatus>) -> RunOutput {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
            self.seen.push_str(&line);
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let stderr = self
            .stderr
            .take()
            .and_then(|stderr| stderr.join().ok())
            .unwrap_or_default();
        RunOutput {
            code: status.and_then(|s| s.code()),
            stdout: std::mem::take(&mut self.seen),
            stderr,
            elapsed: self.start.elapsed(),
        }
    }
}

fn drain<R: Read + Send + 'static>(mut reader: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Where the Debian guest assets live: `$PETREL_ASSETS_DIR`, or `assets/` in the repository.
pub fn assets_dir() -> PathBuf {
    std::env::var_os("PETREL_ASSETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets"))
}

/// The path of a guest asset, panicking with the command that fetches it when it is missing.
pub fn require_asset(name: &str) -> PathBuf {
    let path = assets_dir().join(name);
    assert!(
        path.is_file(),
        "guest asset {} is missing: run scripts/fetch-guest-assets.sh first",
        path.display()
    );
    path
}

impl Drop for Running {
    fn drop(&mut self) {
        // A test that panicked half-way must not leave a VM running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
