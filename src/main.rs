//! The `chromaprod` binary: `chromaprod daemon` runs the service; every other
//! verb is a CLI command, offline or over the daemon's control socket.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use chromaprod::config::{self, CONFIG_PATH_ENV, DEFAULT_CONFIG_PATH};
use chromaprod::control::{self, Command};
use chromaprod::daemon;
use chromaprod::observe::{audit, logging};
use chromaprod::EXIT_CONFIG;

#[derive(Parser, Debug)]
#[command(
    name = "chromaprod",
    version,
    about = "Production companion for Chroma: backups, a healthy connection pool, migrations, systemd integration"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = CONFIG_PATH_ENV, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Control socket of the daemon (default: control.socket_path from the config file).
    #[arg(long, global = true, env = "CHROMAPROD_SOCKET")]
    socket: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand, Debug)]
enum Verb {
    /// Run the daemon (as the systemd service does).
    Daemon,
    /// Check a configuration file without touching the daemon; exit 78 if invalid.
    Validate,
    /// Show the daemon's state: config, reload, endpoints, pool.
    Status,
    /// Make the daemon re-read its configuration file.
    Reload,
    /// Nearest neighbours of a stored record or a vector in a collection.
    Query(QueryArgs),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditVerb),
}

#[derive(Args, Debug)]
struct QueryArgs {
    /// Collection name.
    #[arg(long, short = 'c')]
    collection: String,
    /// Id of a stored record whose embedding is the query.
    #[arg(long, conflicts_with = "vector", required_unless_present = "vector")]
    id: Option<String>,
    /// The query vector, comma-separated.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    vector: Option<Vec<f32>>,
    /// Number of results.
    #[arg(short = 'k', long, default_value_t = 10)]
    k: usize,
}

#[derive(Subcommand, Debug)]
enum AuditVerb {
    /// Check the hash chain; name the first line that was edited, removed or reordered.
    Verify {
        /// Audit file (default: audit.jsonl in daemon.state_dir from the config).
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Verb::Daemon => run_daemon(&cli.config),
        Verb::Validate => validate(&cli.config, cli.json),
        Verb::Audit(AuditVerb::Verify { ref file }) => audit_verify(&cli, file.as_deref()),
        Verb::Status => remote(&cli, Command::Status, print_status),
        Verb::Reload => remote(&cli, Command::Reload, print_reload),
        Verb::Query(ref q) => remote(
            &cli,
            Command::Query {
                collection: q.collection.clone(),
                id: q.id.clone(),
                vector: q.vector.clone(),
                k: q.k,
            },
            print_query,
        ),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn run_daemon(path: &Path) -> i32 {
    let loaded = match config::load(path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("chromaprod: {e}");
            return EXIT_CONFIG;
        }
    };
    let log = match logging::init(&loaded.config.log) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("chromaprod: cannot set up logging: {e}");
            return EXIT_CONFIG;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return 1;
        }
    };
    match runtime.block_on(daemon::run(loaded, log)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "chromaprod stopped");
            eprintln!("chromaprod: {e}");
            e.exit_code()
        }
    }
}

fn validate(path: &Path, json: bool) -> i32 {
    match config::load(path) {
        Ok(loaded) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": true, "path": path, "env_overrides": loaded.source.env_overrides })
                );
            } else {
                println!("{}: configuration is valid", path.display());
            }
            0
        }
        Err(e) => {
            if json {
                let issues = e.issues();
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "path": path, "error": e.to_string(), "issues": issues })
                );
            } else {
                eprintln!("chromaprod: {e}");
            }
            EXIT_CONFIG
        }
    }
}

fn audit_verify(cli: &Cli, file: Option<&Path>) -> i32 {
    let path = match file {
        Some(f) => f.to_path_buf(),
        None => match config::load(&cli.config) {
            Ok(l) => l.config.daemon.state_dir.join(audit::FILE_NAME),
            Err(e) => {
                eprintln!("chromaprod: {e}\n(or pass --file)");
                return EXIT_CONFIG;
            }
        },
    };
    match audit::verify(&path) {
        Ok(lines) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": true, "path": path, "lines": lines })
                );
            } else {
                println!("{}: {lines} entries, chain intact", path.display());
            }
            0
        }
        Err(e) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "path": path, "error": e.to_string() })
                );
            } else {
                eprintln!("chromaprod: {}: {e}", path.display());
            }
            1
        }
    }
}

/// The socket to talk to: `--socket`, else the config file's (even if the
/// rest of the file is invalid), else the default.
fn socket_path(cli: &Cli) -> PathBuf {
    if let Some(s) = &cli.socket {
        return s.clone();
    }
    config::socket_path_hint(&cli.config)
        .unwrap_or_else(|| config::Config::default().control.socket_path)
}

fn remote(cli: &Cli, command: Command, print: fn(&Value)) -> i32 {
    let is_reload = matches!(command, Command::Reload);
    let socket = socket_path(cli);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chromaprod: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let json = cli.json;
    let result = runtime.block_on(control::client::call(&socket, command, |event| {
        if json {
            println!("{}", serde_json::json!({ "event": event }));
        } else {
            eprintln!("{event}");
        }
    }));
    match result {
        Ok(value) => {
            if json {
                println!("{value}");
            } else {
                print(&value);
            }
            // A reload the daemon rejected is a failure for `ExecReload=` and scripts.
            if is_reload && value["ok"] == Value::Bool(false) {
                1
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("chromaprod: {e}");
            if matches!(e, control::ClientError::DaemonNotRunning { .. }) {
                69
            } else {
                1
            }
        }
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_status(v: &Value) {
    println!(
        "chromaprod {} (pid {}), up {}s",
        s(&v["version"]),
        s(&v["pid"]),
        s(&v["uptime_seconds"])
    );
    println!("health:   {}", s(&v["health"]));
    println!("config:   {}", s(&v["config"]["path"]));
    match v["config"]["last_reload"].as_object() {
        None => println!("reload:   none since start"),
        Some(r) if r.get("ok").and_then(Value::as_bool) == Some(true) => {
            let keys: Vec<String> = r["changed_keys"]
                .as_array()
                .map(|a| a.iter().map(s).collect())
                .unwrap_or_default();
            println!(
                "reload:   ok at {} ({})",
                s(&r["at"]),
                if keys.is_empty() {
                    "no changes".into()
                } else {
                    keys.join(", ")
                }
            );
        }
        Some(r) => println!(
            "reload:   FAILED at {}, running config kept:\n{}",
            s(&r["at"]),
            s(&r["error"])
        ),
    }
    println!(
        "chroma:   tenant {} database {}",
        s(&v["chroma"]["tenant"]),
        s(&v["chroma"]["database"])
    );
    let pool = &v["pool"];
    println!(
        "pool:     {} in use of {}, {} waiting",
        s(&pool["in_use"]),
        s(&pool["max"]),
        s(&pool["waiting"])
    );
    for e in pool["endpoints"].as_array().into_iter().flatten() {
        let health = if e["healthy"].as_bool() == Some(true) {
            "up"
        } else {
            "DOWN"
        };
        println!(
            "endpoint: {} {} breaker {}{}",
            s(&e["url"]),
            health,
            s(&e["breaker"]),
            e["last_error"]
                .as_str()
                .map(|m| format!(" (last error: {m})"))
                .unwrap_or_default()
        );
    }
}

fn print_reload(v: &Value) {
    if v["ok"].as_bool() == Some(true) {
        let keys: Vec<String> = v["changed_keys"]
            .as_array()
            .map(|a| a.iter().map(s).collect())
            .unwrap_or_default();
        if keys.is_empty() {
            println!("reloaded: no changes");
        } else {
            println!("reloaded: {}", keys.join(", "));
        }
        if let Some(r) = v["needs_restart"].as_array().filter(|a| !a.is_empty()) {
            println!(
                "restart needed for: {}",
                r.iter().map(s).collect::<Vec<_>>().join(", ")
            );
        }
    } else {
        println!(
            "reload rejected; the running configuration stays in force:\n{}",
            s(&v["error"])
        );
    }
}

fn print_query(v: &Value) {
    println!("{:>4}  {:<24} {:>12}  document", "rank", "id", "distance");
    for (i, r) in v["results"].as_array().into_iter().flatten().enumerate() {
        let doc = s(&r["document"]);
        let doc: String = doc.chars().take(60).collect();
        println!(
            "{:>4}  {:<24} {:>12.6}  {}",
            i + 1,
            s(&r["id"]),
            r["distance"].as_f64().unwrap_or(f64::NAN),
            doc
        );
    }
}
