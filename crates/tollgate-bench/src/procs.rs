//! Child processes (fake upstream, nginx, tollgate), a temp dir, and /proc readings.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("tollgate-bench-{}", unique()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A hard-to-guess token for this run (not cryptographic: loopback only).
pub fn token(prefix: &str) -> String {
    format!("{prefix}-{}", unique())
}

fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos:x}", std::process::id())
}

/// A free loopback port (bound then released; the race with other programs is tolerable here).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A binary next to the running one (cargo puts all of a profile's binaries in one folder).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the current executable")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent folder", exe.display()))?;
    Ok(dir.join(name))
}

/// A child process that is stopped on drop: SIGTERM, up to 2 s grace, then SIGKILL for it and
/// every descendant it had (nginx's workers outlive a killed master otherwise).
pub struct Proc {
    pub name: &'static str,
    pub pid: u32,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &'static str, mut cmd: Command) -> Result<Self> {
        cmd.kill_on_drop(true).stdin(Stdio::null());
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{name} exited immediately"))?;
        Ok(Self { name, pid, child })
    }

    /// `Err` with a message if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("{} exited early ({status})", self.name),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let family = tree(self.pid);
        signal(self.pid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.start_kill();
        for pid in family.into_iter().filter(|&p| p != self.pid) {
            if Path::new(&format!("/proc/{pid}")).exists() {
                signal(pid, "KILL");
            }
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The last `max` bytes of a log file, for error messages.
pub fn tail(path: &Path, max: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].trim().to_owned()
}

/// Starts the `fake-upstream` binary and reads its `listening ADDR` line.
pub async fn start_fake_upstream(
    bin: &Path,
    key: &str,
    chunks: usize,
    logs: &Path,
) -> Result<(Proc, String)> {
    if !bin.is_file() {
        bail!(
            "fake-upstream binary not found at {} (build it with the same profile: cargo build --profile bench -p fake-upstream)",
            bin.display()
        );
    }
    let stderr = std::fs::File::create(logs.join("fake-upstream.log"))?;
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", "127.0.0.1:0", "--chunks", &chunks.to_string()])
        .env("FAKE_UPSTREAM_API_KEY", key)
        .stdout(Stdio::piped())
        .stderr(stderr);
    let mut proc = Proc::spawn("fake-upstream", cmd)?;
    let stdout = proc
        .child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("fake-upstream stdout not captured"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("fake-upstream did not print its address within 10 s")??
        .ok_or_else(|| anyhow!("fake-upstream exited without printing its address"))?;
    let addr = line
        .strip_prefix("listening ")
        .ok_or_else(|| anyhow!("unexpected first line from fake-upstream: {line:?}"))?
        .to_owned();
    Ok((proc, addr))
}

/// Starts nginx (one worker) as a bearer-checking reverse proxy in front of `upstream`.
pub async fn start_nginx(
    bin: &Path,
    dir: &Path,
    upstream: &str,
    upstream_key: &str,
    token: &str,
) -> Result<(Proc, u16)> {
    let port = free_port()?;
    let d = dir.display();
    let conf = format!(
        r#"daemon off;
master_process on;
# As nginx's users run it: one worker per core.
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;
    keepalive_requests 1000000;
    upstream fake {{
        server {upstream};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {upstream_key}";
            proxy_buffering off;
        }}
    }}
}}
"#
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let stderr = std::fs::File::create(dir.join("nginx-stderr.log"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .stdout(Stdio::null())
        .stderr(stderr);
    let mut proc = Proc::spawn("nginx", cmd).map_err(|e| {
        anyhow!(
            "{e:#}: is nginx installed? (apt-get install -y nginx-light, or pass --nginx-bin, or --skip-nginx)"
        )
    })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Err(e) = proc.check_alive() {
            bail!(
                "{e}: {} {}",
                tail(&dir.join("nginx-stderr.log"), 2000),
                tail(&dir.join("nginx-error.log"), 2000)
            );
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok((proc, port));
        }
        if Instant::now() > deadline {
            bail!("nginx did not listen on 127.0.0.1:{port} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct TollgateSetup<'a> {
    pub bin: &'a Path,
    pub dir: &'a Path,
    pub upstream: &'a str,
    pub upstream_key: &'a str,
    pub extra_config: Option<&'a Path>,
    /// `TOKIO_WORKER_THREADS` for `serve` (unset: the runtime's default, one per core).
    pub workers: Option<usize>,
    /// Run `tollgate init` first (false: another instance of the same database did; no key).
    pub init: bool,
}

/// Writes the config, runs `tollgate init`, starts `tollgate serve` and waits for `/health`.
/// Returns the process, its port and the API key from `init`.
pub async fn start_tollgate(
    s: TollgateSetup<'_>,
    client: &reqwest::Client,
) -> Result<(Proc, u16, String)> {
    if !s.bin.is_file() {
        bail!(
            "tollgate binary not found at {} (build it: cargo build --profile bench -p tollgate, or pass --tollgate-bin)",
            s.bin.display()
        );
    }
    let port = free_port()?;
    // The extra TOML goes between the top-level keys and the first table, so it may hold both
    // top-level keys and tables (`[limits]`, more `[[models]]`, ...).
    let mut config = format!(
        "listen = \"127.0.0.1:{port}\"\n\
         data_dir = {data}\n\
         log_json = false\n",
        data = toml_string(&s.dir.join("data").display().to_string()),
    );
    if let Some(extra) = s.extra_config {
        let text = std::fs::read_to_string(extra)
            .with_context(|| format!("reading --tollgate-config-extra {}", extra.display()))?;
        let _ = write!(config, "\n# from {}\n{text}\n", extra.display());
    }
    let _ = write!(
        config,
        "\n[[providers]]\n\
         name = \"fake\"\n\
         kind = \"openai\"\n\
         base_url = \"http://{upstream}/v1\"\n\
         api_key_env = \"FAKE_UPSTREAM_KEY\"\n\n\
         [[models]]\n\
         name = \"bench-model\"\n\
         provider = \"fake\"\n",
        upstream = s.upstream,
    );
    let config_path = s.dir.join("tollgate.toml");
    std::fs::write(&config_path, &config)?;

    let command = |sub: &str| {
        let mut cmd = Command::new(s.bin);
        cmd.arg(sub)
            .arg("--config")
            .arg(&config_path)
            .current_dir(s.dir)
            .env("FAKE_UPSTREAM_KEY", s.upstream_key)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .stdin(Stdio::null());
        cmd
    };

    let api_key = if !s.init {
        String::new()
    } else {
        let mut init = command("init");
        init.args(["--email", "bench@example.com"]);
        let out = tokio::time::timeout(Duration::from_secs(120), init.output())
            .await
            .context("`tollgate init` did not finish within 120 s")?
            .context("running `tollgate init`")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!(
                "`tollgate init` failed ({}):\nstdout: {}\nstderr: {}",
                out.status,
                stdout.trim(),
                stderr.trim()
            );
        }
        stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line.trim()).ok())
            .find_map(|v| v.get("api_key").and_then(|k| k.as_str()).map(str::to_owned))
            .ok_or_else(|| {
                anyhow!(
                    "`tollgate init` printed no JSON line with an \"api_key\":\nstdout: {}\nstderr: {}",
                    stdout.trim(),
                    stderr.trim()
                )
            })?
    };

    let log_path = s.dir.join("tollgate.log");
    let log = std::fs::File::create(&log_path)?;
    let mut serve = command("serve");
    serve.stdout(log.try_clone()?).stderr(log);
    if let Some(n) = s.workers {
        serve.env("TOKIO_WORKER_THREADS", n.to_string());
    }
    let mut proc = Proc::spawn("tollgate", serve)?;
    let health = format!("http://127.0.0.1:{port}/health");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Err(e) = proc.check_alive() {
            bail!("{e}; its log:\n{}", tail(&log_path, 4000));
        }
        if let Ok(resp) = client.get(&health).send().await
            && resp.status().is_success()
        {
            return Ok((proc, port, api_key));
        }
        if Instant::now() > deadline {
            bail!(
                "tollgate did not answer 200 on {health} within 60 s; its log:\n{}",
                tail(&log_path, 4000)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `pid` and all its descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1).and_then(|v| v.parse().ok())) {
                parents.push((p, ppid));
            }
        }
    }
    let mut family = vec![pid];
    let mut i = 0;
    while i < family.len() {
        let parent = family[i];
        family.extend(
            parents
                .iter()
                .filter(|&&(_, pp)| pp == parent)
                .map(|&(p, _)| p),
        );
        i += 1;
    }
    family
}

/// Fields of /proc/PID/stat after the command name: [state, ppid, ...].
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime of these processes, in clock ticks.
pub fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&p| stat_fields(p))
        .map(|f| {
            let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            get(11) + get(12)
        })
        .sum()
}

/// Resident set size of these processes, in KiB.
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .sum()
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if unknown).
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let family = tree(me);
        assert_eq!(family[0], me);
        assert!(rss_kib(&family) > 0);
        assert!(stat_fields(me).is_some_and(|f| f.len() > 12));
    }
}
