use super::*;
use serde_json::json;

fn log_with(n: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = AuditLog::open(dir.path()).expect("open");
    for i in 0..n {
        let actor = if i % 2 == 0 {
            Actor::Peer {
                uid: 1000,
                gid: 1000,
                pid: Some(42),
            }
        } else {
            Actor::system("scheduler")
        };
        log.append(
            &actor,
            "backup.create",
            json!({"i": i, "note": "a,\"hash\":\"x"}),
        )
        .expect("append");
    }
    let path = log.path().to_path_buf();
    (dir, path)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).expect("write");
}

#[test]
fn a_fresh_log_verifies_and_continues_after_reopen() {
    let (dir, path) = log_with(3);
    assert_eq!(verify(&path).expect("verify"), 3);
    let log = AuditLog::open(dir.path()).expect("reopen");
    assert_eq!(log.head().seq, 3);
    log.append(&Actor::system("startup"), "daemon.start", json!({}))
        .expect("append");
    assert_eq!(verify(&path).expect("verify"), 4);
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let first: Value = serde_json::from_str(&lines(&path)[0]).expect("json");
    assert_eq!(first["prev"], ZERO_HASH);
    assert_eq!(first["seq"], 1);
    assert_eq!(first["actor"], json!({"uid":1000,"gid":1000,"pid":42}));
    assert!(first["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    let second: Value = serde_json::from_str(&lines(&path)[1]).expect("json");
    assert_eq!(second["actor"], json!({"system":"scheduler"}));
}

#[test]
fn an_edited_line_is_named() {
    let (_dir, path) = log_with(5);
    let mut l = lines(&path);
    l[2] = l[2].replace("backup.create", "backup.delete");
    write_lines(&path, &l);
    let err = verify(&path).expect_err("edited");
    assert_eq!(err.broken_line(), Some(3), "{err}");
    assert!(err.to_string().contains("edited"), "{err}");
}

#[test]
fn an_edit_with_a_recomputed_hash_breaks_the_next_line() {
    let (_dir, path) = log_with(5);
    let mut l = lines(&path);
    let (content, _) = split_line(l[1].as_bytes()).expect("split");
    let content = String::from_utf8(content)
        .expect("utf8")
        .replace("backup.create", "backup.delete");
    let mut forged = content.clone();
    forged.pop();
    l[1] = format!("{forged},\"hash\":\"{}\"}}", hex_sha256(content.as_bytes()));
    write_lines(&path, &l);
    let err = verify(&path).expect_err("forged");
    assert_eq!(err.broken_line(), Some(3), "{err}");
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[test]
fn a_deleted_line_is_named() {
    let (_dir, path) = log_with(5);
    let mut l = lines(&path);
    l.remove(3);
    write_lines(&path, &l);
    let err = verify(&path).expect_err("deleted");
    assert_eq!(err.broken_line(), Some(4), "{err}");
    assert!(err.to_string().contains("removed"), "{err}");

    let mut l = lines(&path);
    l.remove(0);
    write_lines(&path, &l);
    assert_eq!(verify(&path).expect_err("first").broken_line(), Some(1));
}

#[test]
fn swapped_lines_are_named() {
    let (_dir, path) = log_with(5);
    let mut l = lines(&path);
    l.swap(1, 2);
    write_lines(&path, &l);
    let err = verify(&path).expect_err("swapped");
    assert_eq!(err.broken_line(), Some(2), "{err}");
    assert!(err.to_string().contains("swapped"), "{err}");
}

#[test]
fn a_torn_final_line_is_named_then_set_aside_on_open() {
    let (dir, path) = log_with(5);
    let len = std::fs::metadata(&path).expect("stat").len();
    let f = OpenOptions::new().write(true).open(&path).expect("open");
    f.set_len(len - 20).expect("truncate");
    let err = verify(&path).expect_err("truncated");
    assert_eq!(err.broken_line(), Some(5), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
    // Opening sets the torn bytes aside and continues from record 4.
    let log = AuditLog::open(dir.path()).expect("open repairs a torn tail");
    let (aside, bytes) = log.torn_tail.clone().expect("torn tail reported");
    assert!(bytes > 0, "{bytes}");
    assert_eq!(std::fs::metadata(&aside).expect("aside").len(), bytes);
    assert_eq!(log.head().seq, 4);
    assert_eq!(verify(&path).expect("whole again"), 4);
    log.append(&Actor::system("test"), "after_repair", json!({}))
        .expect("append");
    assert_eq!(verify(&path).expect("chain continues"), 5);
    // An intact log is left alone.
    assert!(AuditLog::open(dir.path())
        .expect("open")
        .torn_tail
        .is_none());
}

#[test]
fn whole_lines_cut_from_the_end_are_named_given_the_head() {
    let (dir, path) = log_with(5);
    let head = AuditLog::open(dir.path()).expect("open").head();
    assert_eq!(head.seq, 5);
    assert_eq!(verify_against(&path, &head).expect("intact"), 5);
    let mut l = lines(&path);
    l.truncate(3);
    write_lines(&path, &l);
    // The chain alone still holds…
    assert_eq!(verify(&path).expect("prefix verifies"), 3);
    // …but not against the recorded head.
    let err = verify_against(&path, &head).expect_err("cut");
    assert_eq!(err.broken_line(), Some(4), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn two_writers_of_one_log_keep_the_chain() {
    // The daemon and an offline CLI command (`key add`) each hold the log open.
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = AuditLog::open(dir.path()).expect("open");
    daemon
        .append(&Actor::system("daemon"), "daemon_start", json!({}))
        .expect("append");
    let cli = AuditLog::open(dir.path()).expect("open again");
    cli.append(&Actor::system("cli"), "key_add", json!({"key_id": "x"}))
        .expect("append");
    daemon
        .append(&Actor::system("daemon"), "daemon_stop", json!({}))
        .expect("append");
    cli.append(&Actor::system("cli"), "key_remove", json!({}))
        .expect("append");
    assert_eq!(verify(daemon.path()).expect("one chain"), 4);
    assert_eq!(daemon.head().seq, 3);
    assert_eq!(cli.head().seq, 4);
}

#[test]
fn appends_from_many_threads_keep_the_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = std::sync::Arc::new(AuditLog::open(dir.path()).expect("open"));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    log.append(&Actor::system("test"), "tick", json!({"t": t, "i": i}))
                        .expect("append");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("join");
    }
    assert_eq!(verify(log.path()).expect("verify"), 40);
}
