//! Running helper commands (`ip`, `nft`, the weft CLI …) with a time limit, so a hung command
//! fails its test instead of hanging the whole suite.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long any helper command may run. The weft CLI has its own, shorter timeouts.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// `argv` as one shell-like line, for messages.
pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `command` to completion (killing it after `timeout`) and collects its output.
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    run_with_input(command, None, timeout)
}

/// Like [`run_with_timeout`], writing `input` (if any) to the command's stdin and then closing
/// it; without input, stdin is `/dev/null`.
pub fn run_with_input(
    command: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> anyhow::Result<Output> {
    let line = describe(command);
    let mut child = command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {line}"))?;
    // A writer on its own thread too: a command that does not read its input (or reads it
    // only after writing output) must not block us. A write error means it stopped reading.
    let writer = child
        .stdin
        .take()
        .zip(input.map(<[u8]>::to_vec))
        .map(|(mut pipe, bytes)| {
            std::thread::spawn(move || {
                use std::io::Write;
                let _ = pipe.write_all(&bytes);
            })
        });
    // Readers on their own threads: a command that fills a pipe must not stall its own exit.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{line} did not finish within {}s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Like [`run_with_timeout`] with the default limit; a non-zero exit is an error that quotes
/// the command and its stderr. Returns stdout.
pub fn run_ok(command: &mut Command) -> anyhow::Result<String> {
    let line = describe(command);
    let out = run_with_timeout(command, COMMAND_TIMEOUT)?;
    if !out.success() {
        bail!(
            "{line} failed ({}): {}{}",
            out.status,
            out.stderr.trim_end(),
            out.stdout.trim_end()
        );
    }
    Ok(out.stdout)
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
