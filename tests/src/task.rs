//! The parts of a task that a Nomad client prepares before StartTask: the alloc and
//! task directories, the log FIFOs with a reader on each (as logmon has), and the
//! TaskConfig message with resources, group network ports and environment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use styx_driver::proto::drivers::{
    AllocatedCpuResources, AllocatedMemoryResources, AllocatedTaskResources, PortMapping,
    Resources, TaskConfig,
};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A group network port: label, allocated host port, and port inside the task.
#[derive(Debug, Clone)]
pub struct Port {
    pub label: String,
    pub value: u16,
    pub to: u16,
}

/// What a test varies between tasks.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub alloc_id: String,
    pub name: String,
    pub memory_mb: i64,
    pub cpu_mhz: i64,
    pub ports: Vec<Port>,
    pub env: Vec<(String, String)>,
}

impl TaskSpec {
    /// Creates a task with a fresh alloc ID, 256 MB and 500 MHz.
    pub fn new(name: &str) -> Self {
        Self {
            alloc_id: new_alloc_id(),
            name: name.to_owned(),
            memory_mb: 256,
            cpu_mhz: 500,
            ports: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// Returns a random-looking, unique UUID-shaped alloc ID.
pub fn new_alloc_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{:08x}-{:04x}-4{:03x}-8000-{:012x}",
        std::process::id(),
        count & 0xffff,
        (nanos >> 20) & 0xfff,
        nanos & 0xffff_ffff_ffff
    )
}

/// The Nomad-side files of one task and readers on its log FIFOs.
pub struct PreparedTask {
    pub config: TaskConfig,
    pub stdout: LogReader,
    pub stderr: LogReader,
}

/// Lines read from a log FIFO, as logmon copies them into log files.
#[derive(Clone, Default)]
pub struct LogReader {
    lines: Arc<Mutex<Vec<String>>>,
}

impl LogReader {
    /// Opens `fifo` for reading and collects its lines in the background. It opens the
    /// FIFO read-write, a Linux option, so that it never reads end of file while no
    /// writer has it open, as across a supervisor change.
    pub fn spawn(fifo: &Path) -> Self {
        let receiver = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(fifo)
            .expect("FIFO opens for reading");
        let reader = Self::default();
        let lines = reader.lines.clone();
        tokio::spawn(async move {
            let mut input = BufReader::new(receiver).lines();
            while let Ok(Some(line)) = input.next_line().await {
                lines.lock().unwrap().push(line);
            }
        });
        reader
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// Creates the alloc dir under `root` with Nomad's layout and the two log FIFOs, starts
/// their readers, and builds the TaskConfig for `spec` with the encoded `config {}`.
pub fn prepare(root: &Path, spec: &TaskSpec, driver_config: Vec<u8>) -> PreparedTask {
    let alloc_dir = root.join("alloc").join(&spec.alloc_id);
    let logs = alloc_dir.join("alloc").join("logs");
    for dir in [
        logs.clone(),
        alloc_dir.join(&spec.name).join("local"),
        alloc_dir.join(&spec.name).join("secrets"),
    ] {
        std::fs::create_dir_all(dir).unwrap();
    }

    let stdout_fifo = logs.join(format!(".{}.stdout.fifo", spec.name));
    let stderr_fifo = logs.join(format!(".{}.stderr.fifo", spec.name));
    for fifo in [&stdout_fifo, &stderr_fifo] {
        let status = std::process::Command::new("mkfifo")
            .arg("-m")
            .arg("600")
            .arg(fifo)
            .status()
            .expect("mkfifo runs");
        assert!(status.success(), "mkfifo {} failed", fifo.display());
    }

    PreparedTask {
        config: task_config(spec, &alloc_dir, &stdout_fifo, &stderr_fifo, driver_config),
        stdout: LogReader::spawn(&stdout_fifo),
        stderr: LogReader::spawn(&stderr_fifo),
    }
}

fn task_config(
    spec: &TaskSpec,
    alloc_dir: &Path,
    stdout: &Path,
    stderr: &Path,
    driver_config: Vec<u8>,
) -> TaskConfig {
    let mut env: HashMap<String, String> = [
        ("NOMAD_ALLOC_ID", spec.alloc_id.as_str()),
        ("NOMAD_TASK_NAME", spec.name.as_str()),
        ("NOMAD_ALLOC_DIR", "/alloc"),
        ("NOMAD_TASK_DIR", "/local"),
        ("NOMAD_SECRETS_DIR", "/secrets"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect();
    for port in &spec.ports {
        env.insert(
            format!("NOMAD_HOST_PORT_{}", port.label),
            port.value.to_string(),
        );
        env.insert(format!("NOMAD_PORT_{}", port.label), port.to.to_string());
    }
    env.extend(spec.env.iter().cloned());

    let ports = spec
        .ports
        .iter()
        .map(|port| PortMapping {
            label: port.label.clone(),
            value: i32::from(port.value),
            to: i32::from(port.to),
            host_ip: "127.0.0.1".to_owned(),
        })
        .collect();

    TaskConfig {
        id: format!("{}/{}/{:08x}", spec.alloc_id, spec.name, rand_suffix()),
        name: spec.name.clone(),
        msgpack_driver_config: driver_config,
        env,
        resources: Some(Resources {
            allocated_resources: Some(AllocatedTaskResources {
                cpu: Some(AllocatedCpuResources {
                    cpu_shares: spec.cpu_mhz,
                }),
                memory: Some(AllocatedMemoryResources {
                    memory_mb: spec.memory_mb,
                    memory_max_mb: 0,
                }),
                ..AllocatedTaskResources::default()
            }),
            ports,
            ..Resources::default()
        }),
        alloc_dir: alloc_dir.display().to_string(),
        stdout_path: stdout.display().to_string(),
        stderr_path: stderr.display().to_string(),
        task_group_name: "group".to_owned(),
        job_name: "job".to_owned(),
        alloc_id: spec.alloc_id.clone(),
        ..TaskConfig::default()
    }
}

fn rand_suffix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    nanos ^ std::process::id()
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Returns the path of a file `name` in the task's state folder.
pub fn state_file(config: &TaskConfig, name: &str) -> PathBuf {
    Path::new(&config.alloc_dir)
        .join(&config.name)
        .join(".styx-driver")
        .join(name)
}
