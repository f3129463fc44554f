//! `coolpy7 passwd [-c] [-D] [-b PASSWORD] FILE USER`: adds, changes or deletes a user of a
//! password file (`-as 3 -pwf FILE`), as `mosquitto_passwd` does for Mosquitto's.
//!
//! `main` hands the arguments after `passwd` to [`run`]: [`parse_args`] turns them into a
//! [`PasswdArgs`]; the password comes from `-b`, from the terminal (asked twice, echo off) or
//! from one line of standard input; [`set_password`] hashes it with argon2id and
//! [`delete_password`] removes a user, both through the pure line edits of
//! [`crate::auth::password_file`], so every other line of the file stays as it was. The file is
//! replaced atomically (a temporary file in the same directory, fsynced, then renamed), so a
//! broker reading it sees either the old file or the new one. Neither the password nor its hash
//! is ever printed.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, BufRead, IsTerminal, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::auth::password_file::{
    check_username, delete_user, hash_password, set_user, HashPasswordError, PasswordFile,
    UsernameError,
};

/// Printed by `-h` and after a usage error.
pub const USAGE: &str = "\
Usage: coolpy7 passwd [-c] [-b PASSWORD] FILE USER
       coolpy7 passwd -D FILE USER

Adds USER to the password file FILE (used with -as 3 -pwf FILE) or changes their password,
with a new argon2id hash; lines of other users and comments are kept as they are.

  -c           create FILE, replacing it if it exists
  -D           delete USER from FILE
  -b PASSWORD  take the password from the command line, for scripts (other users of the
               machine can see it in `ps`, and the shell may keep it in its history)
  -h, --help   print this help

Without -b, the password is asked twice on the terminal, or read as one line of standard
input when that is not a terminal (echo \"$PASSWORD\" | coolpy7 passwd FILE USER).
";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Help,
    Run(PasswdArgs),
}

/// A valid `coolpy7 passwd` command line.
#[derive(Debug, PartialEq, Eq)]
pub struct PasswdArgs {
    pub file: PathBuf,
    pub user: String,
    pub action: Action,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Add the user or change their password; `create` (`-c`) starts from an empty file.
    Set {
        create: bool,
        password: PasswordSource,
    },
    /// `-D`.
    Delete,
}

/// Where the new password comes from.
#[derive(PartialEq, Eq)]
pub enum PasswordSource {
    /// `-b PASSWORD`.
    CommandLine(Vec<u8>),
    /// The terminal, or standard input when that is not one.
    Ask,
}

impl fmt::Debug for PasswordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordSource::CommandLine(_) => f.write_str("CommandLine(<redacted>)"),
            PasswordSource::Ask => f.write_str("Ask"),
        }
    }
}

/// A command line `coolpy7 passwd` does not accept (exit code 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("unknown option {0}")]
    UnknownOption(String),
    #[error("-b needs a password after it")]
    MissingPassword,
    #[error("-c and -D cannot be used together")]
    CreateAndDelete,
    #[error("-b and -D cannot be used together")]
    PasswordAndDelete,
    #[error("expected FILE and USER, got {0} arguments")]
    ArgumentCount(usize),
    #[error("the user name is not valid UTF-8")]
    UsernameNotUtf8,
    #[error("{0}")]
    Username(#[from] UsernameError),
    #[error("the password is empty")]
    EmptyPassword,
}

/// Why `coolpy7 passwd` failed (exit code 1). Names files and users, never a password or hash.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    #[error("{} does not exist (-c creates it)", path.display())]
    FileNotFound { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("user {user:?} is not in {}", path.display())]
    NoSuchUser { user: String, path: PathBuf },
    #[error("cannot read the password: {0}")]
    ReadPassword(#[source] io::Error),
    #[error("no password on standard input")]
    NoPassword,
    #[error("the password is empty")]
    EmptyPassword,
    #[error("the passwords do not match")]
    PasswordsDiffer,
    #[error(transparent)]
    Hash(#[from] HashPasswordError),
}

/// Runs `coolpy7 passwd` with the arguments after `passwd`, printing errors; the exit code is 0
/// on success, 1 on failure and 2 for a bad command line.
pub fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    match parse_args(args) {
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Parsed::Run(args)) => match execute(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("coolpy7 passwd: error: {err}");
                ExitCode::FAILURE
            }
        },
        Err(err) => {
            eprintln!("coolpy7 passwd: {err}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Parses the arguments after `passwd`. Options may come before or after FILE and USER; `--`
/// ends them (for a user name that starts with `-`).
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, UsageError> {
    let mut args = args.into_iter();
    let mut create = false;
    let mut delete = false;
    let mut password = None;
    let mut positional = Vec::new();
    let mut options_ended = false;
    while let Some(arg) = args.next() {
        if options_ended || !arg.as_bytes().starts_with(b"-") || arg == "-" {
            positional.push(arg);
            continue;
        }
        match arg.to_str() {
            Some("--") => options_ended = true,
            Some("-h" | "--help") => return Ok(Parsed::Help),
            Some("-c") => create = true,
            Some("-D") => delete = true,
            Some("-b") => {
                let value = args.next().ok_or(UsageError::MissingPassword)?;
                password = Some(value.into_vec());
            }
            _ => {
                return Err(UsageError::UnknownOption(
                    arg.to_string_lossy().into_owned(),
                ))
            }
        }
    }
    if delete && create {
        return Err(UsageError::CreateAndDelete);
    }
    if delete && password.is_some() {
        return Err(UsageError::PasswordAndDelete);
    }
    let [file, user]: [OsString; 2] = positional
        .try_into()
        .map_err(|positional: Vec<_>| UsageError::ArgumentCount(positional.len()))?;
    let user = user
        .into_string()
        .map_err(|_| UsageError::UsernameNotUtf8)?;
    check_username(&user)?;
    let action = if delete {
        Action::Delete
    } else {
        let password = match password {
            Some(password) if password.is_empty() => return Err(UsageError::EmptyPassword),
            Some(password) => PasswordSource::CommandLine(password),
            None => PasswordSource::Ask,
        };
        Action::Set { create, password }
    };
    Ok(Parsed::Run(PasswdArgs {
        file: PathBuf::from(file),
        user,
        action,
    }))
}

fn execute(args: PasswdArgs) -> Result<(), PasswdError> {
    match args.action {
        Action::Delete => delete_password(&args.file, &args.user),
        Action::Set { create, password } => {
            // A wrong FILE is reported before the password is asked for.
            if !create {
                read_existing(&args.file)?;
            }
            let password = match password {
                PasswordSource::CommandLine(password) => {
                    eprintln!(
                        "coolpy7 passwd: warning: a password given with -b can be seen by other \
                         users in `ps` and may stay in the shell's history"
                    );
                    password
                }
                PasswordSource::Ask => ask_password()?,
            };
            set_password(&args.file, &args.user, &password, create)
        }
    }
}

/// Gives `user` a fresh argon2id hash of `password` in the file at `path`: their line is
/// replaced, or a line is appended; `create` starts from an empty file instead of the current
/// one. A new file is made readable by its owner only (0600); an existing one keeps its mode.
pub fn set_password(
    path: &Path,
    user: &str,
    password: &[u8],
    create: bool,
) -> Result<(), PasswdError> {
    if password.is_empty() {
        return Err(PasswdError::EmptyPassword);
    }
    let current = if create {
        String::new()
    } else {
        read_existing(path)?
    };
    let hash = hash_password(password)?;
    let updated = set_user(&current, user, &hash);
    warn_if_invalid(path, &updated);
    replace_file(path, &updated, create)
}

/// Removes `user`'s lines from the file at `path`; an error if there are none.
pub fn delete_password(path: &Path, user: &str) -> Result<(), PasswdError> {
    let current = read_existing(path)?;
    let updated = delete_user(&current, user).ok_or_else(|| PasswdError::NoSuchUser {
        user: user.to_string(),
        path: path.to_path_buf(),
    })?;
    warn_if_invalid(path, &updated);
    replace_file(path, &updated, false)
}

fn read_existing(path: &Path) -> Result<String, PasswdError> {
    std::fs::read_to_string(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => PasswdError::FileNotFound {
            path: path.to_path_buf(),
        },
        _ => PasswdError::Read {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// The edit keeps lines it does not own as they are, broken ones too: say so, since the broker
/// will refuse the file until they are fixed.
fn warn_if_invalid(path: &Path, text: &str) {
    if let Err(err) = PasswordFile::parse(text) {
        eprintln!(
            "coolpy7 passwd: warning: {}: {err}; the broker will not load this file until it is \
             fixed",
            path.display()
        );
    }
}

/// Replaces the file at `path` (through a symbolic link, the file it points to) with `text`:
/// written to a temporary file in the same directory, synced, renamed over the old one, and the
/// directory synced, so that the file is never seen half-written, even after a crash.
fn replace_file(path: &Path, text: &str, create: bool) -> Result<(), PasswdError> {
    let write_error = |source| PasswdError::Write {
        path: path.to_path_buf(),
        source,
    };
    // Renaming over a link would replace the link, not the file that the broker reads.
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let name = target
        .file_name()
        .ok_or_else(|| write_error(io::Error::other("not a file name")))?;
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let previous = if create {
        None
    } else {
        std::fs::metadata(&target).ok()
    };
    let temp = dir.join(temp_name(name));
    let written = write_new_file(&temp, text, previous.as_ref())
        .and_then(|()| std::fs::rename(&temp, &target));
    if let Err(err) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(write_error(err));
    }
    File::open(&dir)
        .and_then(|dir| dir.sync_all())
        .map_err(write_error)
}

/// `.NAME.coolpy7-passwd.PID.NANOS`: hidden, and unique enough that `create_new` only fails on a
/// real problem.
fn temp_name(name: &OsStr) -> OsString {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(format!(".coolpy7-passwd.{}.{nanos}", std::process::id()));
    temp
}

fn write_new_file(path: &Path, text: &str, previous: Option<&std::fs::Metadata>) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    // Exactly 0600 whatever the umask, or the mode the file had.
    let mode = previous.map_or(0o600, |metadata| metadata.mode() & 0o7777);
    file.set_permissions(Permissions::from_mode(mode))?;
    if let Some(previous) = previous {
        let owned_by_someone_else =
            previous.uid() != file.metadata()?.uid() || previous.gid() != file.metadata()?.gid();
        if owned_by_someone_else
            && std::os::unix::fs::fchown(&file, Some(previous.uid()), Some(previous.gid())).is_err()
        {
            // Only root can give a file away; a broker running as the old owner may no longer
            // be able to read the new file.
            eprintln!(
                "coolpy7 passwd: warning: the new {} could not be given its previous owner \
                 (uid {}, gid {})",
                path.display(),
                previous.uid(),
                previous.gid()
            );
        }
    }
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// The new password: asked twice on the terminal, or one line of standard input otherwise.
fn ask_password() -> Result<Vec<u8>, PasswdError> {
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        let mut line = Vec::new();
        let read = stdin
            .lock()
            .read_until(b'\n', &mut line)
            .map_err(PasswdError::ReadPassword)?;
        if read == 0 {
            return Err(PasswdError::NoPassword);
        }
        let password = strip_line_ending(line);
        if password.is_empty() {
            return Err(PasswdError::EmptyPassword);
        }
        return Ok(password);
    }
    let password = read_hidden("Password: ")?;
    if password.is_empty() {
        return Err(PasswdError::EmptyPassword);
    }
    if read_hidden("Reenter password: ")? != password {
        return Err(PasswdError::PasswordsDiffer);
    }
    Ok(password)
}

fn strip_line_ending(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    line
}

/// Prompts on standard error and reads a line from the terminal on standard input with echo off.
fn read_hidden(prompt: &str) -> Result<Vec<u8>, PasswdError> {
    let mut stderr = io::stderr();
    // A prompt that cannot be shown does not stop the password from being typed.
    let _ = stderr
        .write_all(prompt.as_bytes())
        .and_then(|()| stderr.flush());
    let stdin = io::stdin();
    let echo_off = EchoOff::new(stdin.as_raw_fd()).map_err(PasswdError::ReadPassword)?;
    let mut line = Vec::new();
    let read = stdin.lock().read_until(b'\n', &mut line);
    drop(echo_off);
    if read.map_err(PasswdError::ReadPassword)? == 0 {
        // End of input (Ctrl-D): ECHONL had nothing to echo, so end the prompt's line.
        let _ = writeln!(stderr);
    }
    Ok(strip_line_ending(line))
}

/// The terminal's settings from before echo was turned off, for the signal handler.
static SAVED_TERMINAL: OnceLock<libc::termios> = OnceLock::new();

/// Turns the terminal's echo off (but the Enter key's newline on) until dropped. A signal that
/// would end the process meanwhile (Ctrl-C, Ctrl-\, a hang-up, SIGTERM) first restores the echo,
/// or the user's shell would be left typing blind.
struct EchoOff {
    fd: libc::c_int,
    saved: libc::termios,
}

impl EchoOff {
    fn new(fd: libc::c_int) -> io::Result<EchoOff> {
        // SAFETY: an all-zero termios is a valid value of this plain C struct; tcgetattr
        // overwrites it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes into the struct we own and touches nothing else.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        restore_terminal_on_signals(saved);
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: tcsetattr only reads the struct we pass.
        if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EchoOff { fd, saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: tcsetattr only reads the struct we pass. Nothing more can be done if it fails.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Installs, once, handlers for the signals that end the process which put `saved` back on
/// standard input and then let the signal take its default action.
fn restore_terminal_on_signals(saved: libc::termios) {
    if SAVED_TERMINAL.set(saved).is_err() {
        return; // already installed, with the same settings: the terminal is ours alone
    }
    for signal in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGTERM] {
        // SAFETY: an all-zero sigaction is valid (no flags, an empty mask); we set the handler.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = restore_terminal_and_reraise as *const () as libc::sighandler_t;
        // The default action is back once the handler runs, so its re-raise ends the process.
        action.sa_flags = libc::SA_RESETHAND;
        // SAFETY: the handler only makes async-signal-safe calls (tcsetattr, raise) and reads
        // a OnceLock that was set before the handler was installed.
        unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
    }
}

extern "C" fn restore_terminal_and_reraise(signal: libc::c_int) {
    if let Some(saved) = SAVED_TERMINAL.get() {
        // SAFETY: tcsetattr is async-signal-safe and only reads the struct.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
    }
    // SAFETY: raise is async-signal-safe. The signal is blocked while its handler runs, so the
    // default action takes it as soon as the handler returns.
    unsafe { libc::raise(signal) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Parsed, UsageError> {
        parse_args(args.iter().map(OsString::from))
    }

    fn run_args(file: &str, user: &str, action: Action) -> Parsed {
        Parsed::Run(PasswdArgs {
            file: PathBuf::from(file),
            user: user.to_string(),
            action,
        })
    }

    /// A fresh directory under the system's temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("coolpy7-passwd-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create the temp dir");
            TempDir(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        /// The names in the directory, to check no temporary file is left behind.
        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&self.0)
                .expect("read the temp dir")
                .map(|entry| {
                    entry
                        .expect("dir entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("metadata").mode() & 0o7777
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).expect("read the file")
    }

    #[test]
    fn parse_args_accepts_the_documented_forms() {
        assert_eq!(
            parse(&["f", "alice"]),
            Ok(run_args(
                "f",
                "alice",
                Action::Set {
                    create: false,
                    password: PasswordSource::Ask
                }
            ))
        );
        let created_with_password = run_args(
            "/etc/pw",
            "bob",
            Action::Set {
                create: true,
                password: PasswordSource::CommandLine(b"s3cret".to_vec()),
            },
        );
        assert_eq!(
            parse(&["-c", "-b", "s3cret", "/etc/pw", "bob"]),
            Ok(created_with_password)
        );
        assert_eq!(
            parse(&["/etc/pw", "-b", "s3cret", "bob", "-c"]),
            parse(&["-c", "-b", "s3cret", "/etc/pw", "bob"])
        );
        assert_eq!(
            parse(&["-D", "f", "alice"]),
            Ok(run_args("f", "alice", Action::Delete))
        );
        // -- ends the options; a password may start with a dash.
        assert_eq!(
            parse(&["-b", "-x-", "--", "f", "-dash"]),
            Ok(run_args(
                "f",
                "-dash",
                Action::Set {
                    create: false,
                    password: PasswordSource::CommandLine(b"-x-".to_vec())
                }
            ))
        );
        assert_eq!(parse(&["-h"]), Ok(Parsed::Help));
        assert_eq!(parse(&["f", "--help"]), Ok(Parsed::Help));
    }

    #[test]
    fn parse_args_refuses_bad_command_lines() {
        assert_eq!(parse(&[]), Err(UsageError::ArgumentCount(0)));
        assert_eq!(parse(&["f"]), Err(UsageError::ArgumentCount(1)));
        assert_eq!(parse(&["f", "u", "x"]), Err(UsageError::ArgumentCount(3)));
        assert_eq!(
            parse(&["-x", "f", "u"]),
            Err(UsageError::UnknownOption("-x".to_string()))
        );
        assert_eq!(
            parse(&["-cD", "f", "u"]),
            Err(UsageError::UnknownOption("-cD".to_string()))
        );
        assert_eq!(parse(&["f", "u", "-b"]), Err(UsageError::MissingPassword));
        assert_eq!(
            parse(&["-c", "-D", "f", "u"]),
            Err(UsageError::CreateAndDelete)
        );
        assert_eq!(
            parse(&["-D", "-b", "p", "f", "u"]),
            Err(UsageError::PasswordAndDelete)
        );
        assert_eq!(parse(&["-b", "", "f", "u"]), Err(UsageError::EmptyPassword));
        assert_eq!(
            parse(&["f", "a:b"]),
            Err(UsageError::Username(UsernameError::Colon))
        );
        assert_eq!(
            parse(&["f", ""]),
            Err(UsageError::Username(UsernameError::Empty))
        );
        let not_utf8 = OsString::from_vec(vec![b'a', 0xff]);
        assert_eq!(
            parse_args([OsString::from("f"), not_utf8]),
            Err(UsageError::UsernameNotUtf8)
        );
    }

    #[test]
    fn a_password_on_the_command_line_is_not_in_debug_output() {
        let parsed = parse(&["-b", "hunter2", "f", "u"]).expect("valid");
        let shown = format!("{parsed:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn set_password_creates_a_private_file_and_updates_it_in_place() {
        let dir = TempDir::new("set");
        let path = dir.path("passwords");

        set_password(&path, "alice", b"first", true).expect("create");
        assert_eq!(mode(&path), 0o600);
        let created = read(&path);
        assert!(created.starts_with("alice:$argon2id$v=19$"), "{created}");
        assert!(PasswordFile::parse(&created)
            .expect("parses")
            .verify("alice", b"first"));

        // Hand-edited lines around the user survive, as does a wider mode chosen on purpose.
        let edited = format!("# managed by hand\n{created}# trailing note\n");
        std::fs::write(&path, &edited).expect("edit the file");
        std::fs::set_permissions(&path, Permissions::from_mode(0o640)).expect("chmod");
        set_password(&path, "bob", b"second", false).expect("add bob");
        set_password(&path, "alice", b"changed", false).expect("change alice");

        let updated = read(&path);
        let lines: Vec<&str> = updated.lines().collect();
        assert_eq!(lines.len(), 4, "{updated}");
        assert_eq!(lines[0], "# managed by hand");
        assert!(lines[1].starts_with("alice:$argon2id$"));
        assert_ne!(lines[1], created.trim_end(), "alice has a new hash");
        assert_eq!(lines[2], "# trailing note");
        assert!(lines[3].starts_with("bob:$argon2id$"));
        assert_eq!(mode(&path), 0o640);
        let passwords = PasswordFile::parse(&updated).expect("parses");
        assert!(passwords.verify("alice", b"changed"));
        assert!(!passwords.verify("alice", b"first"));
        assert!(passwords.verify("bob", b"second"));
        assert_eq!(dir.names(), ["passwords"], "no temporary file left");

        // -c starts over, private again.
        set_password(&path, "carol", b"third", true).expect("recreate");
        let recreated = read(&path);
        assert_eq!(recreated.lines().count(), 1);
        assert!(recreated.starts_with("carol:"));
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn set_password_needs_an_existing_file_without_create() {
        let dir = TempDir::new("missing");
        let path = dir.path("passwords");
        let err = set_password(&path, "alice", b"pw", false).expect_err("no file");
        assert!(matches!(err, PasswdError::FileNotFound { .. }), "{err}");
        assert!(err.to_string().contains("-c creates it"), "{err}");
        assert!(!path.exists());
        assert!(matches!(
            set_password(&path, "alice", b"", true),
            Err(PasswdError::EmptyPassword)
        ));
        assert!(!path.exists());
    }

    #[test]
    fn delete_password_removes_only_that_user() {
        let dir = TempDir::new("delete");
        let path = dir.path("passwords");
        std::fs::write(&path, "# users\nalice:$6$a\nbob:$6$b\n").expect("write");
        delete_password(&path, "alice").expect("delete alice");
        assert_eq!(read(&path), "# users\nbob:$6$b\n");

        let err = delete_password(&path, "alice").expect_err("already gone");
        assert!(matches!(err, PasswdError::NoSuchUser { .. }), "{err}");
        assert_eq!(read(&path), "# users\nbob:$6$b\n", "unchanged");
        assert!(matches!(
            delete_password(&dir.path("missing"), "bob"),
            Err(PasswdError::FileNotFound { .. })
        ));
    }

    #[test]
    fn a_symbolic_link_is_followed_and_kept() {
        let dir = TempDir::new("symlink");
        let real = dir.path("real");
        let link = dir.path("link");
        std::fs::write(&real, "# real\n").expect("write");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        set_password(&link, "alice", b"pw", false).expect("through the link");
        assert!(std::fs::symlink_metadata(&link)
            .expect("link metadata")
            .file_type()
            .is_symlink());
        assert!(read(&real).starts_with("# real\nalice:$argon2id$"));
    }

    #[test]
    fn strip_line_ending_removes_one_newline() {
        assert_eq!(strip_line_ending(b"pw\n".to_vec()), b"pw");
        assert_eq!(strip_line_ending(b"pw\r\n".to_vec()), b"pw");
        assert_eq!(strip_line_ending(b"pw".to_vec()), b"pw");
        assert_eq!(strip_line_ending(b" pw \n\n".to_vec()), b" pw \n");
    }
}
