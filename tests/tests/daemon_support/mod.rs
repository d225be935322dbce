//! Running real `enforcer run` daemons in tests: each gets its own
//! `--cgroup-root` (a test cgroup), `--bpffs` directory and `--socket`, and
//! is killed and uninstalled when dropped.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use enforcer::api::{Client, PolicyFile, Request, Response, StatusReport};
use enforcer_tests::daemon::{self, DaemonProcess, DaemonSpec};
use enforcer_tests::{CgroupGuard, ReachableCopy, Server};

static SERIAL: AtomicUsize = AtomicUsize::new(0);

/// The `enforcer` binary: `$ENFORCER_BIN`, or the one Cargo built next to
/// this test's directory (`cargo build -p enforcer` first).
pub(crate) fn enforcer_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ENFORCER_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/enforcer
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("enforcer"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build -p enforcer` first or set ENFORCER_BIN",
        bin.display()
    );
    bin
}

/// A scratch directory removed on drop.
pub(crate) struct Scratch(pub PathBuf);

impl Scratch {
    pub(crate) fn new(what: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "enforcer-test-{what}-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Write `text` as the only `policy.toml` of `dir` (atomically, by rename,
/// as editors and config management do).
pub(crate) fn write_policy(dir: &Path, text: &str) {
    std::fs::create_dir_all(dir).expect("policy dir");
    let tmp = dir.join(".policy.toml.tmp");
    std::fs::write(&tmp, text).expect("write policy");
    std::fs::rename(&tmp, dir.join("policy.toml")).expect("rename policy");
}

/// The `apply` request `enforcer apply DIR` sends: the files' text, read
/// here (the daemon never opens a client's path).
pub(crate) fn apply_request(dir: &Path, allow_empty: bool) -> Request {
    let sources = enforcer::policy::read_dir(dir).expect("read the policy directory");
    Request::Apply {
        source: dir.display().to_string(),
        files: PolicyFile::from_sources(sources).expect("policy files"),
        confirm_ms: None,
        allow_empty,
    }
}

/// A FIFO at `path` (nobody ever writes to it).
pub(crate) fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// A policy where workload `web` (cgroups `web*` under the root) may
/// connect to `host` on `allowed` only.
pub(crate) fn web_policy(allowed: u16) -> String {
    web_policy_ports(&[allowed])
}

/// [`web_policy`] with several TCP ports allowed.
pub(crate) fn web_policy_ports(allowed: &[u16]) -> String {
    let ports: Vec<String> = allowed.iter().map(|p| format!("\"{p}/tcp\"")).collect();
    format!(
        r#"[workload.web]
cgroup = "web*"
labels = {{ app = "web" }}

[[policy]]
name = "web"
select = {{ app = "web" }}
allow-out = [ {{ to = ["host"], ports = [{}] }} ]
"#,
        ports.join(", ")
    )
}

/// `GET /metrics` from the daemon's endpoint at `addr`, retried for up to
/// 3 s while it starts; the whole HTTP answer.
pub(crate) fn scrape_metrics(addr: &str) -> String {
    use std::io::Write as _;
    let mut body = String::new();
    let fetched = Daemon::eventually(Duration::from_secs(3), || {
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
            .is_err()
        {
            return false;
        }
        body.clear();
        s.read_to_string(&mut body).is_ok() && body.starts_with("HTTP/1.0 200")
    });
    assert!(fetched, "no metrics from {addr}: {body}");
    body
}

/// A running daemon: the toolkit's [`DaemonSpec`] and [`DaemonProcess`],
/// with this test's scratch directory and the daemon's API.
pub(crate) struct Daemon {
    spec: DaemonSpec,
    process: Option<DaemonProcess>,
    pub socket: PathBuf,
    pub bpffs: PathBuf,
    /// `--state-dir`: in the scratch directory, kept across restarts.
    pub state_dir: PathBuf,
    /// The binary for [`Daemon::cli_as`], made on first use.
    reachable_bin: OnceLock<ReachableCopy>,
    scratch: Scratch,
}

impl Daemon {
    /// Start a daemon on `root` with the policies in `policies`, and wait
    /// until it reports READY=1 (sd_notify), i.e. enforcement is in place.
    pub(crate) fn start(root: &CgroupGuard, policies: &Path) -> Daemon {
        Daemon::start_with(root, policies, &[])
    }

    /// [`Daemon::start`] with more `enforcer run` options.
    pub(crate) fn start_with(root: &CgroupGuard, policies: &Path, extra: &[&str]) -> Daemon {
        Daemon::start_wrapped(root, policies, extra, &[])
    }

    /// [`Daemon::start_with`], the daemon run under `wrapper` (for example
    /// `setpriv` with the packaged unit's capabilities).
    pub(crate) fn start_wrapped(
        root: &CgroupGuard,
        policies: &Path,
        extra: &[&str],
        wrapper: &[&str],
    ) -> Daemon {
        let mut daemon = Daemon::prepare(root, policies, extra, wrapper);
        daemon.restart();
        daemon
    }

    /// A daemon as production runs it: its programs on the root of the
    /// cgroup v2 hierarchy, where every process of this machine passes them
    /// (the test runner included, unmanaged: `--unmanaged allow`); the
    /// policy's patterns are relative to that root. Started, READY=1.
    pub(crate) fn start_at_cgroup_root(policies: &Path, extra: &[&str]) -> Daemon {
        let mount = enforcer_tests::cgroup2_mount().expect("cgroup v2 mount");
        let mut daemon = Daemon::prepare_at(mount.to_path_buf(), policies, extra, &[]);
        daemon.restart();
        daemon
    }

    /// A daemon with these settings, not started yet: [`Daemon::restart`]
    /// or [`Daemon::try_restart`] starts it.
    pub(crate) fn prepare(
        root: &CgroupGuard,
        policies: &Path,
        extra: &[&str],
        wrapper: &[&str],
    ) -> Daemon {
        Daemon::prepare_at(root.path().to_path_buf(), policies, extra, wrapper)
    }

    fn prepare_at(
        cgroup_root: PathBuf,
        policies: &Path,
        extra: &[&str],
        wrapper: &[&str],
    ) -> Daemon {
        let scratch = Scratch::new("daemon");
        let bpffs = PathBuf::from(format!(
            "/sys/fs/bpf/enforcer-test-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        ));
        let spec = DaemonSpec::new(enforcer_bin(), policies, cgroup_root, bpffs, &scratch.0)
            .args(extra)
            .wrapper(wrapper);
        Daemon {
            socket: spec.socket_path().to_path_buf(),
            bpffs: spec.bpffs().to_path_buf(),
            state_dir: spec.state_dir_path().to_path_buf(),
            spec,
            process: None,
            reachable_bin: OnceLock::new(),
            scratch,
        }
    }

    /// (Re)start the process with the same settings; waits for READY=1.
    pub(crate) fn restart(&mut self) {
        if let Err(status) = self.try_restart() {
            panic!(
                "daemon exited with {status} before READY=1:\n{}",
                self.log()
            );
        }
    }

    /// [`Daemon::restart`], but a daemon that exits before READY=1 is an
    /// answer (its exit status), not a failure.
    pub(crate) fn try_restart(&mut self) -> Result<(), std::process::ExitStatus> {
        assert!(self.process.is_none(), "daemon still running");
        match self.spec.start() {
            Ok(process) => {
                self.process = Some(process);
                Ok(())
            }
            Err(enforcer_tests::Error::DaemonExited { status, .. }) => Err(status),
            Err(e) => panic!("{e}"),
        }
    }

    fn process(&self) -> &DaemonProcess {
        self.process.as_ref().expect("started")
    }

    /// The STATUS= line sent with READY=1.
    pub(crate) fn ready_status(&self) -> Option<&str> {
        self.process
            .as_ref()?
            .ready_message()
            .lines()
            .find_map(|l| l.strip_prefix("STATUS="))
    }

    /// The first sd_notify line starting with `prefix` received from now
    /// on, within `within`.
    pub(crate) fn wait_notify_prefix(&self, prefix: &str, within: Duration) -> Option<String> {
        self.process()
            .wait_notify(within, |l| l.starts_with(prefix))?
            .pop()
    }

    /// The sd_notify lines received from now until `line` arrives (or
    /// `within` passes: then `None`).
    pub(crate) fn wait_notify(&self, line: &str, within: Duration) -> Option<Vec<String>> {
        self.process().wait_notify(within, |l| l == line)
    }

    pub(crate) fn scratch(&self) -> &Path {
        &self.scratch.0
    }

    pub(crate) fn log(&self) -> String {
        self.spec.log()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process().pid()
    }

    pub(crate) fn signal(&self, signal: libc::c_int) {
        self.process().signal(signal).expect("kill");
    }

    /// SIGKILL and reap.
    pub(crate) fn kill9(&mut self) {
        self.process = None;
    }

    /// SIGTERM and wait for a clean exit.
    pub(crate) fn terminate(&mut self) {
        let mut process = self.process.take().expect("running");
        let status = process
            .stop(libc::SIGTERM, Duration::from_secs(10))
            .expect("daemon ignored SIGTERM");
        assert!(
            status.success(),
            "daemon exit status {status}:\n{}",
            self.log()
        );
    }

    pub(crate) fn client(&self) -> Client {
        let client = Client::connect(&self.socket).expect("connect to the daemon");
        client.set_timeout(Some(Duration::from_secs(30))).unwrap();
        client
    }

    pub(crate) fn status(&self) -> StatusReport {
        match self.client().call(&Request::Status).expect("status") {
            Response::Status(report) => *report,
            other => panic!("unexpected answer {other:?}"),
        }
    }

    pub(crate) fn call(&self, request: &Request) -> Response {
        self.client().call(request).expect("request")
    }

    /// Run an `enforcer` client command against this daemon (killed, and
    /// the test failed, if it takes more than 60 s).
    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(enforcer_bin());
        command.args(args).arg("--socket").arg(&self.socket);
        run_bounded(&mut command, Duration::from_secs(60))
    }

    /// [`Daemon::cli`] as another user: `setpriv` with `uid`, `gid` and
    /// the supplementary `groups` (none when empty). The binary is a
    /// [`ReachableCopy`]: that user may not reach the checkout.
    pub(crate) fn cli_as(&self, uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> Output {
        let bin = self.reachable_bin.get_or_init(|| {
            ReachableCopy::of(&enforcer_bin()).expect("a copy of enforcer other users may run")
        });
        let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg(if groups.is_empty() {
                "--clear-groups".to_owned()
            } else {
                format!("--groups={}", groups.join(","))
            })
            .arg("--")
            .arg(bin.path())
            .args(args)
            .arg("--socket")
            .arg(&self.socket);
        run_bounded(&mut command, Duration::from_secs(60))
    }

    /// Poll `check` every 20 ms for up to `within`; true once it holds.
    pub(crate) fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if check() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Remove the pins (detaching everything) like `enforcer run --uninstall`.
    pub(crate) fn uninstall(&self) -> Output {
        daemon::uninstall_command(self.spec.binary(), &self.bpffs)
            .output()
            .expect("run enforcer --uninstall")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        let _ = daemon::uninstall(self.spec.binary(), &self.bpffs);
    }
}

/// Runs `command` to completion with its output captured; kills it and
/// fails the test if it runs longer than `within` (a hang is a failure).
pub(crate) fn run_bounded(command: &mut Command, within: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// A group made for a test (`groupadd`), removed on drop.
pub(crate) struct TestGroup {
    pub name: String,
    pub gid: u32,
}

impl TestGroup {
    pub(crate) fn new(tag: &str) -> TestGroup {
        let name = format!(
            "enft{}{tag}{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("groupadd")
            .arg(&name)
            .output()
            .expect("run groupadd");
        assert!(
            out.status.success(),
            "groupadd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let gid = enforcer::api::resolve_group(&name).expect("the new group");
        TestGroup { name, gid }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

/// Runs `work` on a thread of its own whose real, effective and saved uid
/// and gid are `uid` and `gid`, with the supplementary `groups`. The raw
/// system calls change that thread's credentials only (glibc's wrappers
/// would change every thread of the test): the kernel sees a real
/// unprivileged client, whose sockets stay open after the thread ends.
pub(crate) fn as_user<T: Send>(
    uid: u32,
    gid: u32,
    groups: &[u32],
    work: impl FnOnce() -> T + Send,
) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: raw credential system calls on this thread; the
                // pointer and length describe `groups`.
                unsafe {
                    assert_eq!(
                        libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()),
                        0,
                        "setgroups"
                    );
                    assert_eq!(
                        libc::syscall(libc::SYS_setresgid, gid, gid, gid),
                        0,
                        "setresgid"
                    );
                    assert_eq!(
                        libc::syscall(libc::SYS_setresuid, uid, uid, uid),
                        0,
                        "setresuid"
                    );
                }
                work()
            })
            .join()
            .expect("the thread of another user")
    })
}

/// Port 0 on 127.0.0.1: a free loopback port for a test server.
pub(crate) fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Two loopback TCP servers and a policy directory in which workload `web`
/// may reach only the first (`allowed`), not the second (`denied`).
pub(crate) fn servers_and_web_policy() -> (Server, Server, Scratch) {
    let allowed = Server::tcp(None, None, loopback()).expect("server");
    let denied = Server::tcp(None, None, loopback()).expect("server");
    let policies = Scratch::new("policies");
    write_policy(&policies.0, &web_policy(allowed.addr().port()));
    (allowed, denied, policies)
}
