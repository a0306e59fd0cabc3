//! nginx as the reference proxy, and what the benchmark reads of its
//! processes from `/proc` (children, CPU time).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// nginx's version (`nginx -v`), or why it cannot be measured.
pub(super) fn nginx_version(bin: &Path) -> Result<String, String> {
    let out = Command::new(bin).arg("-v").output().map_err(|e| {
        format!(
            "cannot run {} ({e}); install it (`apt-get install -y nginx-light`) or pass --nginx-bin",
            bin.display()
        )
    })?;
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find_map(|l| l.strip_prefix("nginx version: "))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| format!("{} -v said {:?}", bin.display(), text.trim()))
}

/// A running nginx (master and workers); dropping it stops them all.
#[derive(Debug)]
pub(super) struct Nginx {
    master: Child,
    prefix: PathBuf,
}

/// nginx's configuration: a keep-alive reverse proxy to `upstream`.
pub(super) fn nginx_conf(prefix: &Path, port: u16, upstream: &str, workers: &str) -> String {
    let p = prefix.display();
    let mut conf = String::new();
    let _ = write!(
        conf,
        "daemon off;
master_process on;
worker_processes {workers};
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    keepalive_requests 1000000;
    upstream replica {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replica;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
    );
    conf
}

impl Nginx {
    pub(super) fn start(
        bin: &Path,
        prefix: &Path,
        port: u16,
        upstream: &str,
        workers: &str,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(prefix).context("cannot create nginx's prefix directory")?;
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(prefix, port, upstream, workers))
            .context("cannot write nginx.conf")?;
        let log = std::fs::File::create(prefix.join("stderr.log"))?;
        let master = Command::new(bin)
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Self {
            master,
            prefix: prefix.to_owned(),
        })
    }

    /// The master and its workers.
    pub(super) fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.master.id()];
        pids.extend(children_of(self.master.id()));
        pids
    }

    /// Fails if the error log has an error (or worse) in it.
    pub(super) fn check_log(&self) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(self.prefix.join("error.log")).unwrap_or_default();
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| {
                ["[error]", "[crit]", "[alert]", "[emerg]"]
                    .iter()
                    .any(|k| l.contains(k))
            })
            .collect();
        if let Some(first) = bad.first() {
            bail!("nginx logged {} error(s); the first: {first}", bad.len());
        }
        Ok(())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let workers = children_of(self.master.id());
        // SIGTERM: a fast shutdown of master and workers.
        let _ = Command::new("kill")
            .args(["-TERM", &self.master.id().to_string()])
            .status();
        for _ in 0..50 {
            if matches!(self.master.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
        // Workers left behind by a master that did not stop them.
        for pid in workers {
            if Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// The fields of `/proc/PID/stat` after the command name (field 3 first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU time (user + system, all threads) process `pid` has used, s.
pub(super) fn cpu_seconds(pid: u32) -> Option<f64> {
    let fields = stat_fields(pid)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// Busy time of every core together (user, nice, system, irq, softirq,
/// steal) from `/proc/stat`, s.
pub(super) fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))?
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal …
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| fields.get(*i))
        .sum::<u64>();
    Some(busy as f64 / clock_ticks())
}

/// Clock ticks per second of `/proc/PID/stat`'s times.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse::<u32>().ok())
            .filter(|ticks| *ticks > 0)
            .map_or(100.0, f64::from)
    })
}

/// Processes whose parent is `parent`.
pub(super) fn children_of(parent: u32) -> Vec<u32> {
    let parent = parent.to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat_fields(*pid).is_some_and(|f| f.get(1) == Some(&parent)))
        .collect()
}

/// The pid of this process's child running `tidal <args…>`.
pub(super) fn child_pid(args: &[&str]) -> anyhow::Result<u32> {
    for pid in children_of(std::process::id()) {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).skip(1).collect();
        if args.iter().zip(&argv).all(|(a, b)| a.as_bytes() == *b) && argv.len() >= args.len() {
            return Ok(pid);
        }
    }
    bail!(
        "cannot find the `tidal {}` process among this process's children",
        args.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_conf_keeps_upstream_connections_alive() {
        let conf = nginx_conf(Path::new("/tmp/x"), 8081, "127.0.0.1:9000", "auto");
        for line in [
            "daemon off;",
            "worker_processes auto;",
            "server 127.0.0.1:9000;",
            "keepalive 64;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "access_log off;",
            "error_log /tmp/x/error.log warn;",
            "listen 127.0.0.1:8081;",
        ] {
            assert!(conf.contains(line), "{line} missing from\n{conf}");
        }
    }

    #[test]
    fn this_process_has_cpu_time_and_no_such_child() {
        assert!(cpu_seconds(std::process::id()).is_some());
        assert!(machine_busy_seconds().is_some_and(|s| s > 0.0));
        assert!(child_pid(&["no-such-subcommand"]).is_err());
    }
}
