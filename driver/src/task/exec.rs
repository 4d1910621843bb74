//! Interactive exec (`nomad alloc exec`): a `container exec -i` process whose stdin,
//! stdout and stderr are streamed to and from Nomad.
//!
//! NOTE: terminal size changes are not forwarded, because the CLI offers no way to
//! resize a running exec session from outside a terminal.

use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::Status;

use super::{Context, Lifecycle, TaskError};
use crate::container::CliError;
use crate::proto::drivers::{ExecTaskStreamingIoOperation, ExecTaskStreamingResponse, ExitResult};

/// Size of each output chunk sent to Nomad.
const CHUNK_SIZE: usize = 16 * 1024;

type ResponseSender = mpsc::Sender<Result<ExecTaskStreamingResponse, Status>>;

impl Lifecycle {
    /// Starts `command` in the task's container and streams it: `stdin` carries Nomad's
    /// input (a `close` ends it), `responses` gets output chunks and then one message
    /// with `exited` and the exit result.
    pub fn exec_streaming(
        &self,
        context: &Context,
        id: &str,
        command: &[String],
        tty: bool,
        stdin: mpsc::Receiver<ExecTaskStreamingIoOperation>,
        responses: ResponseSender,
    ) -> Result<(), TaskError> {
        let task = self.task(id)?;
        if command.is_empty() {
            return Err(TaskError::InvalidTask("exec needs a command".into()));
        }
        let mut child = context
            .cli()
            .exec_interactive_command(&task.state.container, command, tty)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => CliError::NotFound {
                    path: context.config.container_path.clone(),
                },
                _ => CliError::Spawn {
                    command: format!("{} exec", context.config.container_path.display()),
                    source,
                },
            })?;

        let input = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        tokio::spawn(forward_stdin(stdin, input));
        tokio::spawn(async move {
            let out = forward_output(stdout, responses.clone(), false);
            let err = forward_output(stderr, responses.clone(), true);
            let (status, (), ()) = tokio::join!(child.wait(), out, err);
            let exit_code = status.ok().and_then(|status| status.code()).unwrap_or(-1);
            let last = ExecTaskStreamingResponse {
                exited: true,
                result: Some(ExitResult {
                    exit_code,
                    ..ExitResult::default()
                }),
                ..ExecTaskStreamingResponse::default()
            };
            let _ = responses.send(Ok(last)).await;
        });
        Ok(())
    }
}

async fn forward_stdin(
    mut operations: mpsc::Receiver<ExecTaskStreamingIoOperation>,
    mut input: tokio::process::ChildStdin,
) {
    while let Some(operation) = operations.recv().await {
        if !operation.data.is_empty() && input.write_all(&operation.data).await.is_err() {
            return;
        }
        if operation.close {
            return;
        }
    }
    // Dropping `input` closes the process's stdin.
}

async fn forward_output(
    mut source: impl AsyncRead + Unpin,
    responses: ResponseSender,
    is_stderr: bool,
) {
    let mut buffer = vec![0u8; CHUNK_SIZE];
    loop {
        let read = source.read(&mut buffer).await.unwrap_or(0);
        let operation = ExecTaskStreamingIoOperation {
            data: buffer[..read].to_vec(),
            close: read == 0,
        };
        let response = if is_stderr {
            ExecTaskStreamingResponse {
                stderr: Some(operation),
                ..ExecTaskStreamingResponse::default()
            }
        } else {
            ExecTaskStreamingResponse {
                stdout: Some(operation),
                ..ExecTaskStreamingResponse::default()
            }
        };
        if responses.send(Ok(response)).await.is_err() || read == 0 {
            return;
        }
    }
}
