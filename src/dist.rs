//! Files the package ships that are generated from the CLI definition (man
//! pages, shell completions), and a parse-only check of command lines used
//! by the runbook test.
//!
//! Reached as `chromaprod dist …` (first argument only), which the binary
//! intercepts before parsing its CLI: `dist` is not a subcommand of that
//! CLI, so it appears in no man page, completion or `--help`, and the CLI
//! stays defined in one place (`src/main.rs`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

/// `chromaprod dist`: packaging helpers.
#[derive(Parser, Debug)]
#[command(name = "chromaprod dist", about = "chromaprod packaging helpers")]
struct DistCli {
    #[command(subcommand)]
    verb: DistVerb,
}

/// If the first argument is `dist`, runs the packaging helper it names
/// against the CLI that `cli` builds and returns the exit code.
pub fn intercept(cli: impl FnOnce() -> clap::Command) -> Option<u8> {
    let mut args = std::env::args_os().skip(1).peekable();
    if args.peek().is_none_or(|a| a != "dist") {
        return None;
    }
    let dist = DistCli::parse_from(args);
    Some(u8::try_from(main(cli(), &dist.verb)).unwrap_or(1))
}

/// `chromaprod dist …`.
#[derive(Subcommand, Debug)]
pub enum DistVerb {
    /// Write chromaprod.1 and one page per subcommand (chromaprod-backup.1, …) into DIR.
    Man { dir: PathBuf },
    /// Write bash, zsh and fish completions into DIR (chromaprod.bash, _chromaprod, chromaprod.fish).
    Completions { dir: PathBuf },
    /// Parse a command line (without the program name) with the real CLI
    /// definition and run nothing: exit 0 if it parses, 2 with clap's error if not.
    Parse {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Runs a dist verb against the CLI definition `cmd`; returns the exit code.
pub fn main(cmd: clap::Command, verb: &DistVerb) -> i32 {
    let result = match verb {
        DistVerb::Man { dir } => write_man_pages(cmd, dir).map(|files| {
            let mut out = std::io::stdout().lock();
            for f in files {
                // A reader that went away is no reason to panic.
                let _ = writeln!(out, "{}", f.display());
            }
        }),
        DistVerb::Completions { dir } => write_completions(cmd, dir).map(|files| {
            let mut out = std::io::stdout().lock();
            for f in files {
                // A reader that went away is no reason to panic.
                let _ = writeln!(out, "{}", f.display());
            }
        }),
        DistVerb::Parse { args } => {
            return match check_args(cmd, args) {
                Ok(()) => 0,
                Err(e) => {
                    eprint!("{e}");
                    2
                }
            }
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("chromaprod dist: {e}");
            1
        }
    }
}

/// Whether `args` (without the program name) parse. `--help` and
/// `--version` count as parsing.
pub fn check_args(cmd: clap::Command, args: &[String]) -> Result<(), clap::Error> {
    let argv = std::iter::once("chromaprod".to_string()).chain(args.iter().cloned());
    match cmd.try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Extra sections of chromaprod(1): what the generated options and
/// subcommands cannot say.
const EXTRA_SECTIONS: &str = r#".SH FILES
.TP
\fI/etc/chromaprod/chromaprod.toml\fR
The configuration file (a conffile of the package). Check it with \fBchromaprod validate\fR.
.TP
\fI/etc/chromaprod/credentials/\fR
Keys and tokens handed to the service with \fBLoadCredential=\fR; readable by root only.
.TP
\fI/var/lib/chromaprod/\fR
State: the audit log \fIaudit.jsonl\fR, \fIschedule.json\fR, and the default local backup repository \fIbackups/\fR.
.TP
\fI/run/chromaprod/control.sock\fR
The control socket the CLI talks to; members of the \fBchromaprod\fR group may use it.
.SH ENVIRONMENT
.TP
\fBCHROMAPROD_CONFIG\fR
Configuration file (overridden by \fB\-\-config\fR).
.TP
\fBCHROMAPROD__SECTION__KEY\fR
Overrides one configuration key, e.g. \fBCHROMAPROD__POOL__MAX_CONNECTIONS=20\fR.
.TP
\fBCREDENTIALS_DIRECTORY\fR
Where the backup key \fIbackup\-key\fR is read from when \fBbackup.key_file\fR is unset (set by systemd for the service).
.TP
\fBAWS_*\fR, \fBAZURE_STORAGE_*\fR, \fBGOOGLE_APPLICATION_CREDENTIALS\fR, \fBSTORAGE_EMULATOR_HOST\fR
Endpoints and credentials of the backup repository's object store.
.SH EXIT STATUS
\fB0\fR success; \fB1\fR failure (for \fBdoctor\fR: a check failed); \fB2\fR bad command line;
\fB69\fR the daemon is not running, or Chroma did not become reachable at start-up;
\fB78\fR invalid configuration; \fB130\fR a second stop signal cut the graceful stop short.
.SH SEE ALSO
\fBsystemctl\fR(1), \fBjournalctl\fR(1), \fBsystemd.exec\fR(5).
The operator's runbook: \fI/usr/share/doc/chromaprod/runbook.md\fR.
"#;

/// Writes chromaprod.1 (with FILES, ENVIRONMENT, EXIT STATUS and SEE ALSO
/// sections) and a page per visible subcommand; returns the files written.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fs_err::create_dir_all(dir)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_sub_pages(sub.clone(), dir, &mut written)?;
    }
    let man = clap_mangen::Man::new(cmd.clone()).manual("chromaprod manual");
    let path = dir.join(man.get_filename());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    out.write_all(EXTRA_SECTIONS.as_bytes())?;
    man.render_version_section(&mut out)?;
    fs_err::write(&path, out)?;
    written.push(path);
    Ok(written)
}

fn write_sub_pages(
    cmd: clap::Command,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_sub_pages(sub.clone(), dir, written)?;
    }
    let man = clap_mangen::Man::new(cmd).manual("chromaprod manual");
    written.push(man.generate_to(dir)?);
    Ok(())
}

/// Writes bash, zsh and fish completions; returns the files written.
pub fn write_completions(mut cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    use clap_complete::Shell;
    fs_err::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (shell, name) in [
        (Shell::Bash, "chromaprod.bash"),
        (Shell::Zsh, "_chromaprod"),
        (Shell::Fish, "chromaprod.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd, "chromaprod", &mut out);
        let path = dir.join(name);
        fs_err::write(&path, out)?;
        written.push(path);
    }
    Ok(written)
}
