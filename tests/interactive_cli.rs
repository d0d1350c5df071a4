//! `qwen-run -i` end to end on the real SmolLM2-135M-Instruct weights (assets/, from scripts/setup.sh):
//! three turns through a pipe (the answer names Paris; turn 2 evaluates only its new tokens), one
//! turn with -p, and a pseudo-terminal session: Ctrl-C ends a long reply, the next question is still
//! answered, arrow-up recalls it, and Ctrl-C at the prompt leaves.

use std::io::{Read, Write};
#[path = "forward_common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use common::{convert, root, scratch};
use std::time::{Duration, Instant};

/// SmolLM2-135M-Instruct converted to f16 from assets/smollm2-hf (cached under target/): it answers
/// "What is the capital of France?" with Paris under its default system prompt, the Q4_1 file does not.
fn model() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let hf = root().join("assets/smollm2-hf");
        assert!(
            hf.join("config.json").exists(),
            "{} is missing: run scripts/setup.sh",
            hf.display()
        );
        let out = scratch("chat").join("smollm2.f16.gguf");
        convert(&hf, &out, "f16");
        out
    })
    .clone()
}

/// The llama.cpp Q4_1 file as shipped.
fn q4_1() -> PathBuf {
    let path = root().join("assets/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh",
        path.display()
    );
    path
}

fn qwen_run() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qwen-run"))
}

/// Runs qwen-run with `stdin` piped in; returns (stdout, stderr) after checking it exited 0.
fn run_piped(args: &[&str], stdin: &str) -> (String, String) {
    let mut child = qwen_run()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input); // EOF ends the chat
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Parses "turn N: evaluated E new tokens (cached C of the B already evaluated)".
fn cache_stat(stderr: &str, turn: usize) -> (usize, usize, usize) {
    let prefix = format!("turn {turn}: evaluated ");
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no '{prefix}' line in stderr:\n{stderr}"));
    let nums: Vec<usize> = line[prefix.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(nums.len(), 3, "{line}");
    (nums[0], nums[1], nums[2])
}

#[test]
fn three_turns_through_a_pipe() {
    let m = model();
    let (stdout, stderr) = run_piped(
        &[
            "-f",
            m.to_str().unwrap(),
            "-i",
            "-v",
            "--temp",
            "0",
            "-n",
            "64",
            "-c",
            "2048",
        ],
        "What is the capital of France?\nAnd what is the capital of Germany?\nThank you!\n",
    );
    // Only the replies are on stdout, each ending with a newline.
    assert!(stdout.ends_with('\n'), "{stdout:?}");
    assert!(!stdout.contains("<|im_"), "{stdout:?}");
    let first_line = stdout.lines().next().unwrap_or("");
    assert!(
        first_line.contains("Paris"),
        "first reply: {first_line:?}\nall:\n{stdout}"
    );
    assert!(stdout.contains("Berlin"), "{stdout}");
    // Statistics after each of the three replies, on stderr.
    assert_eq!(stderr.matches("[prompt: ").count(), 3, "{stderr}");
    assert!(
        stderr.contains("tokens/s") && stderr.contains("context: "),
        "{stderr}"
    );
    // Turn 1 evaluates the whole prompt; turns 2 and 3 reuse everything in the cache and evaluate
    // only their new tokens.
    let (e1, c1, b1) = cache_stat(&stderr, 1);
    assert_eq!((c1, b1), (0, 0));
    assert!(e1 > 20, "turn 1 prompt has {e1} tokens");
    for turn in [2, 3] {
        let (e, c, b) = cache_stat(&stderr, turn);
        assert!(b > e1, "turn {turn}: the cache held {b} tokens");
        assert_eq!(
            c,
            b,
            "turn {turn} re-evaluated {} cached tokens:\n{stderr}",
            b - c
        );
        assert!(
            e < 25,
            "turn {turn} evaluated {e} tokens for a short question:\n{stderr}"
        );
    }
}

#[test]
fn the_q4_1_file_reuses_the_cache_too() {
    let m = q4_1();
    let (stdout, stderr) = run_piped(
        &[
            "-f",
            m.to_str().unwrap(),
            "-i",
            "-v",
            "--temp",
            "0",
            "-n",
            "32",
        ],
        "What is the capital of France?\nAnd what is the capital of Germany?\n",
    );
    assert_eq!(stderr.matches("[prompt: ").count(), 2, "{stderr}");
    assert!(stdout.lines().count() >= 2, "{stdout}");
    let (e, c, b) = cache_stat(&stderr, 2);
    assert_eq!(
        c,
        b,
        "turn 2 re-evaluated {} cached tokens:\n{stderr}",
        b - c
    );
    assert!(e < 25, "turn 2 evaluated {e} tokens:\n{stderr}");
}

#[test]
fn single_turn_with_p() {
    let m = model();
    let (stdout, stderr) = run_piped(
        &[
            "-f",
            m.to_str().unwrap(),
            "-p",
            "What is the capital of France?",
            "--temp",
            "0",
            "-n",
            "48",
        ],
        "",
    );
    assert!(
        stdout.contains("Paris"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.ends_with('\n'));
}

#[test]
fn commands_in_a_pipe() {
    let m = model();
    // /system replaces the system prompt, /reset clears the history, /exit leaves before the last line.
    let (stdout, stderr) = run_piped(
        &[
            "-f",
            m.to_str().unwrap(),
            "-i",
            "-v",
            "--temp",
            "0",
            "-n",
            "16",
        ],
        "/system You are a helpful assistant.\nHi!\n/reset\nHi!\n/exit\nThis line is never read.\n",
    );
    assert_eq!(stderr.matches("[prompt: ").count(), 2, "{stderr}");
    // After /reset the same message gets the same greedy reply, and is numbered turn 1 again.
    let replies: Vec<&str> = stdout.lines().filter(|l| !l.is_empty()).collect();
    assert!(replies.len() >= 2, "{stdout}");
    assert!(stderr.matches("turn 1: evaluated").count() == 2, "{stderr}");
}

/// Output of a child under a pseudo-terminal, collected by a reader thread.
struct Screen(Arc<Mutex<Vec<u8>>>);

impl Screen {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    /// Waits until `pat` appears after byte `from`; returns the offset just past it.
    fn wait_for(&self, pat: &str, from: usize, secs: u64) -> usize {
        let t0 = Instant::now();
        loop {
            {
                let buf = self.0.lock().unwrap();
                let hay = String::from_utf8_lossy(&buf[from.min(buf.len())..]).into_owned();
                if let Some(k) = hay.find(pat) {
                    return from + hay[..k].len() + pat.len();
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "no {pat:?} within {secs} s; screen:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// qwen-run with `args` on a fresh 50x200 pseudo-terminal: the child, what it
/// writes (collected by a reader thread) and the keyboard.
fn spawn_in_pty(
    args: &[&str],
) -> (
    Box<dyn portable_pty::Child + Send + Sync>,
    Screen,
    Box<dyn Write + Send>,
) {
    use portable_pty::{native_pty_system, CommandBuilder, PtySize};
    let pair = native_pty_system()
        .openpty(PtySize {
            rows: 50,
            cols: 200,
            pixel_width: 0,
            pixel_height: 0,
        })
        .unwrap();
    let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_qwen-run"));
    cmd.args(args);
    cmd.env("TERM", "xterm");
    let child = pair.slave.spawn_command(cmd).unwrap();
    drop(pair.slave);
    let mut reader = pair.master.try_clone_reader().unwrap();
    let writer = pair.master.take_writer().unwrap();
    let screen = Screen(Arc::new(Mutex::new(Vec::new())));
    let sink = screen.0.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    (child, screen, writer)
}

#[test]
fn ctrl_c_under_a_terminal_stops_the_reply_then_leaves_at_the_prompt() {
    let m = model();
    let (mut child, screen, mut writer) = spawn_in_pty(&[
        "-f",
        m.to_str().unwrap(),
        "-i",
        "--temp",
        "0",
        "-n",
        "1500",
        "-c",
        "2048",
    ]);

    let at = screen.wait_for("> ", 0, 60);
    writer
        .write_all(b"Write a very long story about a dragon who learns to cook.\r")
        .unwrap();
    writer.flush().unwrap();
    let start = screen.wait_for("cook.", at, 30);
    // Let the reply run for a while, then interrupt it.
    let t0 = Instant::now();
    while screen.len() < start + 300 {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the reply did not start:\n{}",
            screen.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.write_all(b"\x03").unwrap();
    writer.flush().unwrap();
    let after = screen.wait_for("stopped: interrupted", start, 60);
    let after = screen.wait_for("> ", after, 30);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the program left on the first Ctrl-C:\n{}",
        screen.text()
    );

    writer
        .write_all(b"What is the capital of France?\r")
        .unwrap();
    writer.flush().unwrap();
    let answered = screen.wait_for("Paris", after, 120);
    let prompt = screen.wait_for("> ", answered, 120);
    // Line editing with history: arrow up brings the question back.
    writer.write_all(b"\x1b[A\r").unwrap();
    writer.flush().unwrap();
    let again = screen.wait_for("What is the capital of France?", prompt, 30);
    let answered = screen.wait_for("Paris", again, 120);
    screen.wait_for("> ", answered, 120);
    // Ctrl-C at the prompt leaves.
    writer.write_all(b"\x03").unwrap();
    writer.flush().unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no exit after Ctrl-C at the prompt:\n{}",
            screen.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("{}", screen.text());
    assert!(status.success(), "{status:?}\n{}", screen.text());
}

#[test]
fn a_message_longer_than_the_context_is_a_one_line_error() {
    let m = model();
    let mut child = qwen_run()
        .args(["-f", m.to_str().unwrap(), "-i", "-c", "40", "--temp", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(
            b"Tell me a long story about the history of the Roman empire and its fall please\n",
        )
        .unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains("the context holds 40 (raise --ctx-size)"),
        "{line}"
    );
}

#[test]
fn long_prompt_shows_a_progress_bar_only_on_a_terminal() {
    let m = model();
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(40); // ~400 tokens
    let args = [
        "-f",
        m.to_str().unwrap(),
        "--mode",
        "generate",
        "-p",
        prompt.as_str(),
        "-n",
        "2",
        "--temp",
        "0",
        "-b",
        "32",
    ];
    // Through pipes: stderr has the summary line, no bar.
    let out = qwen_run().args(args).output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("tokens ("), "bar drawn into a pipe: {err}");
    // Under a terminal: the bar is drawn while the prompt is evaluated.
    let (mut child, screen, _keys) = spawn_in_pty(&args);
    let at = screen.wait_for("prompt ", 0, 60);
    screen.wait_for(" tokens (", at, 60);
    screen.wait_for("stopped:", at, 60);
    assert!(child.wait().unwrap().success(), "{}", screen.text());
}
