//! `coolpy7 passwd` through the real binary: the password from standard input and from `-b`,
//! the file it writes (one argon2id line per user, mode 0600, other lines kept), `-D`, and the
//! exit codes. The tests crate does not link the broker's library, so the hashes are checked
//! for their format here; that they verify is tested in the library
//! (`auth::password_file`, `passwd`).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coolpy7_tests::broker::{binary_path, run_to_exit};
use coolpy7_tests::unique_id;

/// Runs `coolpy7 passwd <args>` with `stdin` as its standard input: (exit code, stdout + stderr).
/// argon2id in the debug binary takes well under a second; the bound is generous.
fn passwd(args: &[&str], stdin: &[u8]) -> (Option<i32>, String) {
    let mut child = Command::new(binary_path())
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start coolpy7 passwd");
    let mut input = child.stdin.take().expect("piped stdin");
    // A command that fails on its arguments may exit before reading: its answer is what counts.
    match input.write_all(stdin) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
        written => written.expect("write the password"),
    }
    drop(input);
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("coolpy7 passwd {args:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("coolpy7 passwd output");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

/// A fresh directory under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(unique_id("coolpy7-passwd-e2e"));
        std::fs::create_dir_all(&dir).expect("create the temp dir");
        TempDir(dir)
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).expect("read the password file")
}

fn mode(path: &str) -> u32 {
    std::fs::metadata(Path::new(path))
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

/// The argon2id line of `user` in `text`, checked for its shape.
fn argon2id_line<'a>(text: &'a str, user: &str) -> &'a str {
    let prefix = format!("{user}:$argon2id$v=19$m=19456,t=2,p=1$");
    let line = text
        .lines()
        .find(|line| line.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no argon2id line for {user} in:\n{text}"));
    // user:$argon2id$v=19$params$salt$hash
    assert_eq!(line.split('$').count(), 6, "{line}");
    line
}

#[test]
fn passwd_adds_users_from_stdin_and_from_b_keeping_other_lines() {
    let dir = TempDir::new();
    let file = dir.file("passwords");

    let (code, output) = passwd(&["-c", &file, "alice"], b"alice's password\n");
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(mode(&file), 0o600, "a new password file is private");
    let created = read(&file);
    assert_eq!(created.lines().count(), 1, "{created}");
    argon2id_line(&created, "alice");

    // A comment added by hand stays where it is.
    std::fs::write(&file, format!("# staff\n{created}# end\n")).expect("edit by hand");
    let (code, output) = passwd(&["-b", "bob's password", &file, "bob"], b"");
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains("warning") && output.contains("ps"),
        "{output}"
    );

    let text = read(&file);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0], "# staff");
    assert_eq!(lines[1], created.trim_end(), "alice's line is untouched");
    assert_eq!(lines[2], "# end");
    let bob = argon2id_line(&text, "bob");
    assert_eq!(lines[3], bob);
    assert_ne!(
        bob.split('$').nth(4),
        lines[1].split('$').nth(4),
        "each hash has its own salt"
    );
    for secret in ["alice's password", "bob's password"] {
        assert!(!text.contains(secret) && !output.contains(secret));
    }

    // A new password for alice replaces her line in place; -D removes bob.
    let (code, output) = passwd(&[&file, "alice"], b"another password\r\n");
    assert_eq!(code, Some(0), "{output}");
    let (code, output) = passwd(&["-D", &file, "bob"], b"");
    assert_eq!(code, Some(0), "{output}");
    let text = read(&file);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], "# staff");
    assert_eq!(lines[1], argon2id_line(&text, "alice"));
    assert_ne!(lines[1], created.trim_end(), "alice has a new hash");
    assert_eq!(lines[2], "# end");
    assert_eq!(mode(&file), 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .expect("read the temp dir")
        .map(|entry| entry.expect("dir entry").file_name())
        .collect();
    assert_eq!(leftovers, ["passwords"], "no temporary file left behind");
}

#[test]
fn passwd_failures_exit_1_and_leave_the_file_alone() {
    let dir = TempDir::new();
    let file = dir.file("passwords");

    let (code, output) = passwd(&[&file, "alice"], b"pw\n");
    assert_eq!(code, Some(1), "a missing file without -c: {output}");
    assert!(output.contains("-c"), "{output}");
    assert!(!Path::new(&file).exists());

    let (code, output) = passwd(&["-c", &file, "alice"], b"");
    assert_eq!(code, Some(1), "no password on stdin: {output}");
    let (code, output) = passwd(&["-c", &file, "alice"], b"\n");
    assert_eq!(code, Some(1), "an empty password: {output}");
    assert!(!Path::new(&file).exists());

    std::fs::write(&file, "# nobody\n").expect("write");
    let (code, output) = passwd(&["-D", &file, "alice"], b"");
    assert_eq!(code, Some(1), "deleting an unknown user: {output}");
    assert!(output.contains("alice"), "{output}");
    assert_eq!(read(&file), "# nobody\n");
}

#[test]
fn passwd_usage_errors_exit_2() {
    for args in [
        &["passwd"][..],
        &["passwd", "only-a-file"],
        &["passwd", "f", "u", "extra"],
        &["passwd", "-x", "f", "u"],
        &["passwd", "-c", "-D", "f", "u"],
        &["passwd", "-D", "-b", "pw", "f", "u"],
        &["passwd", "f", "u", "-b"],
        &["passwd", "f", "user:name"],
    ] {
        let (code, output) = run_to_exit(args);
        assert_eq!(code, Some(2), "{args:?}: {output}");
        assert!(
            output.contains("Usage: coolpy7 passwd"),
            "{args:?}: {output}"
        );
    }
    let (code, output) = run_to_exit(&["passwd", "--help"]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("Usage: coolpy7 passwd"), "{output}");
}
