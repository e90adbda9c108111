//! Structured logs: the fields an operator filters on are fields, not text.

use crate::common;

use std::time::Duration;

use common::chroma::ChromaServer;
use common::daemon::{cli, write_config, DaemonProcess};

#[test]
fn json_logs_carry_endpoint_and_operation_fields() {
    let mut chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &[chroma.base()],
        "[retry]\nmax_retries = 1\nbase_delay = \"10ms\"\n",
    );
    let text = std::fs::read_to_string(&config)
        .expect("read")
        .replace("format = \"text\"", "format = \"json\"");
    std::fs::write(&config, text).expect("write");
    let daemon = DaemonProcess::spawn(&config, &[]);
    daemon.wait_ready(Duration::from_secs(20));

    chroma.stop();
    let (code, _, _) = cli(
        &daemon.socket,
        &["query", "--collection", "c", "--vector", "1,2"],
    );
    assert_ne!(code, Some(0));

    let log = daemon.log();
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!events.is_empty(), "no JSON log lines:\n{log}");
    let failed = events
        .iter()
        .find(|e| e["fields"]["message"] == "Chroma call failed")
        .unwrap_or_else(|| panic!("no failed-call event:\n{log}"));
    assert_eq!(failed["level"], "WARN");
    assert_eq!(
        failed["fields"]["endpoint"]
            .as_str()
            .map(|u| u.trim_end_matches('/')),
        Some(chroma.base().as_str())
    );
    assert!(failed["span"]["operation"].is_string(), "{failed}");
}
