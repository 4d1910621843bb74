//! The simulator's state directory: one folder per container with its config, and
//! runtime files while it runs.
//!
//! Layout of `<state>/containers/<id>/`:
//! - `config.json`: what `create` was given.
//! - `running`: the monitor's PID, written at start and removed by the monitor when
//!   the image exits.
//! - `image.pid`: PID of the image process.
//! - `ip`: last octet N of 127.77.0.N while running.
//! - `started`: Unix seconds of the last start.
//! - `exit`: exit status of the last run, written by the monitor.
//! - `stdout.log`, `stderr.log`: the image's output streams, truncated on start.
//!
//! Addresses are a machine-wide resource, unlike the state directory: every simulator
//! on the host hands out 127.77.0.N, and tests run several simulators at once. A
//! running container therefore also keeps an advisory lock on
//! `<temp dir>/container-sim-addresses/<octet>.lock`, which no other simulator can
//! take while the container's monitor or image process lives.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// First and last octet handed out on 127.77.0.0/24; .1 plays the gateway.
const FIRST_HOST: u8 = 2;
const LAST_HOST: u8 = 254;

pub struct Store {
    root: PathBuf,
}

/// What `create` stored for one container.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    pub id: String,
    /// Fully qualified image reference.
    pub image: String,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub mounts: Vec<Value>,
    pub cpus: u64,
    pub memory_bytes: u64,
    /// Unix seconds.
    pub created: u64,
}

impl ContainerConfig {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "image": self.image,
            "command": self.command,
            "env": self.env,
            "labels": self.labels,
            "mounts": self.mounts,
            "cpus": self.cpus,
            "memoryBytes": self.memory_bytes,
            "created": self.created,
        })
    }

    fn from_json(value: &Value) -> Option<Self> {
        let strings = |key: &str| -> Option<Vec<String>> {
            value[key]
                .as_array()?
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect()
        };
        let labels = value["labels"]
            .as_array()?
            .iter()
            .filter_map(|pair| Some((pair[0].as_str()?.to_owned(), pair[1].as_str()?.to_owned())))
            .collect();
        Some(Self {
            id: value["id"].as_str()?.to_owned(),
            image: value["image"].as_str()?.to_owned(),
            command: strings("command")?,
            env: strings("env")?,
            labels,
            mounts: value["mounts"].as_array()?.clone(),
            cpus: value["cpus"].as_u64()?,
            memory_bytes: value["memoryBytes"].as_u64()?,
            created: value["created"].as_u64()?,
        })
    }
}

impl Store {
    pub fn open(root: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(root.join("containers"))?;
        fs::create_dir_all(root.join("exits"))?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the store-wide lock until the returned file is dropped.
    pub fn lock(&self) -> io::Result<File> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("lock"))?;
        file.lock()?;
        Ok(file)
    }

    pub fn system_stopped(&self) -> bool {
        self.root.join("system-stopped").exists()
    }

    /// Exit status file of the last run of `id`, kept outside the container folder so
    /// that an attached `start` still reads it when a forced delete removes the folder.
    pub fn last_exit_path(&self, id: &str) -> PathBuf {
        self.root.join("exits").join(id)
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    pub fn exists(&self, id: &str) -> bool {
        self.dir(id).join("config.json").exists()
    }

    pub fn ids(&self) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(self.root.join("containers"))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if self.exists(&name) {
                ids.push(name);
            }
        }
        Ok(ids)
    }

    pub fn save_config(&self, config: &ContainerConfig) -> io::Result<()> {
        let dir = self.dir(&config.id);
        fs::create_dir_all(&dir)?;
        write_atomic(&dir.join("config.json"), config.to_json().to_string())
    }

    pub fn config(&self, id: &str) -> io::Result<ContainerConfig> {
        let text = fs::read_to_string(self.dir(id).join("config.json"))?;
        let value: Value = serde_json::from_str(&text).map_err(io::Error::other)?;
        ContainerConfig::from_json(&value)
            .ok_or_else(|| io::Error::other(format!("corrupt config of container {id}")))
    }

    /// Returns true while the container's monitor runs. A `running` file left behind
    /// by a monitor that was killed does not count, so that such a container reads as
    /// stopped instead of running forever.
    pub fn is_running(&self, id: &str) -> bool {
        self.read_number(id, "running")
            .is_some_and(|pid| monitor_alive(pid, id))
    }

    pub fn read_number(&self, id: &str, file: &str) -> Option<i64> {
        fs::read_to_string(self.dir(id).join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn write_number(&self, id: &str, file: &str, value: i64) -> io::Result<()> {
        write_atomic(&self.dir(id).join(file), value.to_string())
    }

    pub fn remove(&self, id: &str, file: &str) {
        let _ = fs::remove_file(self.dir(id).join(file));
    }

    /// Picks the next free host octet after the last one handed out, as Apple's
    /// rotating allocator does, so a restarted container usually gets a new address.
    /// The caller holds the lock. The returned file carries the address's machine-wide
    /// claim, which lasts until every process that inherited the file has exited.
    pub fn allocate_ip(&self) -> io::Result<(u8, File)> {
        let in_use: Vec<i64> = self
            .ids()?
            .iter()
            .filter(|id| self.is_running(id))
            .filter_map(|id| self.read_number(id, "ip"))
            .collect();
        let last = fs::read_to_string(self.root.join("last-ip"))
            .ok()
            .and_then(|text| text.trim().parse::<u8>().ok())
            .unwrap_or(FIRST_HOST - 1);

        let span = u16::from(LAST_HOST - FIRST_HOST + 1);
        let next = if last < FIRST_HOST {
            0
        } else {
            u16::from(last - FIRST_HOST) + 1
        };
        for step in 0..span {
            let candidate = FIRST_HOST + u8::try_from((next + step) % span).unwrap_or(0);
            if in_use.contains(&i64::from(candidate)) {
                continue;
            }
            // Another simulator's running container may have the address.
            if let Some(claim) = claim_address(candidate)? {
                write_atomic(&self.root.join("last-ip"), candidate.to_string())?;
                return Ok((candidate, claim));
            }
        }
        Err(io::Error::other("no free address left on 127.77.0.0/24"))
    }

    /// Waits until the container no longer runs, up to `limit`.
    pub fn wait_stopped(&self, id: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.is_running(id) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

/// Returns true when `pid` is a live monitor of container `id`. A zombie counts as
/// exited, and the command line check rules out a PID that was reused after the
/// monitor exited.
fn monitor_alive(pid: i64, id: &str) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let exited = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('Z' | 'X')));
    if exited {
        return false;
    }

    let Ok(command_line) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = command_line.split(|byte| *byte == 0).collect();
    args.windows(2)
        .any(|pair| pair[0] == b"__monitor" && pair[1] == id.as_bytes())
}

/// Takes the machine-wide claim on 127.77.0.`octet`, or returns `None` when another
/// process has it. The claim is an advisory lock, so the kernel drops it when its
/// last holder exits, even one that was killed.
fn claim_address(octet: u8) -> io::Result<Option<File>> {
    let dir = std::env::temp_dir().join("container-sim-addresses");
    fs::create_dir_all(&dir)?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{octet}.lock")))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(error)) => Err(error),
    }
}

pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) -> io::Result<()> {
    let mut staging = path.as_os_str().to_owned();
    staging.push(".partial");
    fs::write(&staging, contents)?;
    fs::rename(&staging, path)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
