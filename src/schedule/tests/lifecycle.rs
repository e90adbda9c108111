//! State files, interrupted and panicking runs, cancellation, offsets, logs.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_corrupt_state_file_is_set_aside_with_a_warning() {
    let logs = LogBuf::default();
    let _guard = logs.install();
    let dir = tempfile::tempdir().expect("test");
    let state = state_in(&dir);
    std::fs::create_dir_all(state.parent().expect("test")).expect("test");
    std::fs::write(&state, b"{\"version\": 1, \"jobs\": {\"full_backup\": tru").expect("test");
    let h = start_with(
        vec![spec(JobKind::FullBackup, HOURLY)],
        &state,
        JAN1 + 30 * MIN,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 61 * MIN).await;
    let runner = h.stop().await;
    // Fresh start: no catch-up, the schedule runs.
    assert_eq!(runner.times(), vec![JAN1 + HOUR]);
    let text = logs.text();
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains("the job state is unreadable"), "{text}");
    assert!(text.contains("jobs.json.corrupt"), "{text}");
    assert!(state.with_file_name("jobs.json.corrupt").exists());
    // Replaced by a good file, no temp file left behind.
    assert_eq!(read_state(&state)["version"], 1);
    assert!(!state.with_file_name("jobs.json.tmp").exists());
}

#[tokio::test(start_paused = true)]
async fn a_state_file_of_another_version_starts_fresh() {
    let dir = tempfile::tempdir().expect("test");
    let state = state_in(&dir);
    std::fs::create_dir_all(state.parent().expect("test")).expect("test");
    std::fs::write(&state, br#"{"version": 99, "jobs": {}}"#).expect("test");
    let h = start_with(
        vec![spec(JobKind::FullBackup, HOURLY)],
        &state,
        JAN1,
        |_| {},
    );
    run_until(&h.clock, JAN1 + MIN).await;
    assert!(h.stop().await.calls().is_empty());
    assert_eq!(read_state(&state)["version"], 1);
}

#[tokio::test(start_paused = true)]
async fn a_missing_state_directory_is_created() {
    let dir = tempfile::tempdir().expect("test");
    let state = dir.path().join("a").join("b").join("jobs.json");
    let h = start_with(
        vec![spec(JobKind::FullBackup, EVERY_MINUTE)],
        &state,
        JAN1,
        |_| {},
    );
    run_until(&h.clock, JAN1 + MIN).await;
    h.stop().await;
    assert_eq!(
        read_state(&state)["jobs"]["full_backup"]["last_outcome"],
        "succeeded"
    );
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_run_is_reported_and_not_repeated() {
    let logs = LogBuf::default();
    let _guard = logs.install();
    let dir = tempfile::tempdir().expect("test");
    let state = state_in(&dir);
    std::fs::create_dir_all(state.parent().expect("test")).expect("test");
    // Written as a daemon that died during the 00:00 run would leave it.
    let file = serde_json::json!({
        "version": 1,
        "jobs": {"full_backup": {
            "since_ms": JAN1 - 10 * HOUR,
            "last_run_ms": JAN1,
            "last_finished_ms": null,
            "last_outcome": "succeeded",
            "last_error": null,
            "running": true
        }}
    });
    std::fs::write(&state, file.to_string()).expect("test");
    // Restart at 00:20, daily 03:00 job: nothing missed since the run began.
    let h = start_with(
        vec![spec(JobKind::FullBackup, "0 0 3 * * *")],
        &state,
        JAN1 + 20 * MIN,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 2 * HOUR).await;
    let st = h.status(JobKind::FullBackup);
    assert_eq!(st.last_outcome, Some(Outcome::Interrupted));
    assert!(!st.running);
    assert!(h.stop().await.calls().is_empty());
    assert!(logs.text().contains("interrupted"), "{}", logs.text());
    assert_eq!(read_state(&state)["jobs"]["full_backup"]["running"], false);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_run_is_recorded_and_the_job_keeps_running() {
    let dir = tempfile::tempdir().expect("test");
    let h = start_with(
        vec![spec(JobKind::Verify, EVERY_MINUTE)],
        &state_in(&dir),
        JAN1,
        |r| r.panic = true,
    );
    run_until(&h.clock, JAN1 + 3 * MIN).await;
    let st = h.status(JobKind::Verify);
    let runner = h.stop().await;
    assert_eq!(runner.times().len(), 3);
    assert_eq!(st.last_outcome, Some(Outcome::Failed));
    assert!(st.last_error.expect("test").contains("panicked: boom"));
    assert_eq!(st.skipped_fires, 0);
}

#[tokio::test(start_paused = true)]
async fn cancellation_stops_the_driver_without_waiting_for_the_next_fire() {
    let dir = tempfile::tempdir().expect("test");
    let h = start_with(
        vec![spec(JobKind::FullBackup, "0 0 3 * * *")],
        &state_in(&dir),
        JAN1,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 5 * SEC).await;
    let before = tokio::time::Instant::now();
    h.cancel.cancel();
    tokio::time::timeout(Duration::from_millis(1), h.sched.wait())
        .await
        .expect("the driver stops at once");
    assert_eq!(before.elapsed(), Duration::ZERO);
    assert!(h.runner.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn cancellation_waits_for_a_run_that_stops_and_records_it() {
    let dir = tempfile::tempdir().expect("test");
    let state = state_in(&dir);
    let stop = CancellationToken::new();
    let h = start_with(
        vec![spec(JobKind::FullBackup, EVERY_MINUTE)],
        &state,
        JAN1,
        |r| {
            r.work = Duration::from_secs(3600);
            // The runner watches the same token, as the daemon's backup manager does.
            r.stop = stop.clone();
        },
    );
    run_until(&h.clock, JAN1 + MIN + SEC).await;
    assert!(h.status(JobKind::FullBackup).running);
    let before = tokio::time::Instant::now();
    stop.cancel();
    h.cancel.cancel();
    tokio::time::timeout(Duration::from_millis(1), h.sched.wait())
        .await
        .expect("the driver and the run stop at once");
    assert_eq!(before.elapsed(), Duration::ZERO);
    let rec = &read_state(&state)["jobs"]["full_backup"];
    assert_eq!(rec["last_outcome"], "failed");
    assert_eq!(rec["last_error"], "stopped");
}

#[tokio::test(start_paused = true)]
async fn fire_times_follow_the_configured_offset() {
    let dir = tempfile::tempdir().expect("test");
    let clock = TokioClock::starting_at(JAN1);
    let runner = Arc::new(Recorder::new(clock));
    let cancel = CancellationToken::new();
    // 03:00 at +02:00 is 01:00 UTC.
    let sched = Scheduler::start(
        vec![spec(JobKind::FullBackup, "0 0 3 * * *")],
        7200,
        state_in(&dir),
        runner.clone(),
        cancel.clone(),
        clock,
    );
    run_until(&clock, JAN1 + 2 * HOUR).await;
    // The same cron read in -01:00 (04:00 UTC).
    sched.reschedule(vec![spec(JobKind::FullBackup, "0 0 3 * * *")], -3600);
    assert_eq!(sched.status()[0].next_fire_ms, Some(JAN1 + 4 * HOUR));
    run_until(&clock, JAN1 + 5 * HOUR).await;
    cancel.cancel();
    sched.wait().await;
    assert_eq!(runner.times(), vec![JAN1 + HOUR, JAN1 + 4 * HOUR]);
}

#[tokio::test(start_paused = true)]
async fn each_run_is_logged_with_job_and_trigger_fields() {
    let logs = LogBuf::default();
    let _guard = logs.install();
    let dir = tempfile::tempdir().expect("test");
    let h = start_with(
        vec![spec(JobKind::Prune, EVERY_MINUTE)],
        &state_in(&dir),
        JAN1,
        |r| r.fail = true,
    );
    run_until(&h.clock, JAN1 + MIN).await;
    h.stop().await;
    let text = logs.text();
    let started = text
        .lines()
        .find(|l| l.contains("job started"))
        .expect("a start line");
    assert!(started.contains("job=\"prune\""), "{started}");
    assert!(started.contains("trigger=\"schedule\""), "{started}");
    let failed = text
        .lines()
        .find(|l| l.contains("job failed"))
        .expect("a failure line");
    assert!(failed.contains("ERROR"), "{failed}");
    assert!(failed.contains("repository unreachable"), "{failed}");
    assert!(failed.contains("job=\"prune\""), "{failed}");
}

#[tokio::test(start_paused = true)]
async fn an_unwritable_state_file_is_logged_and_jobs_still_run() {
    let logs = LogBuf::default();
    let _guard = logs.install();
    let dir = tempfile::tempdir().expect("test");
    // The state file's directory is a regular file: every save fails.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").expect("test");
    let h = start_with(
        vec![spec(JobKind::Verify, EVERY_MINUTE)],
        &blocker.join("jobs.json"),
        JAN1,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 2 * MIN).await;
    let st = h.status(JobKind::Verify);
    assert_eq!(h.stop().await.times(), vec![JAN1 + MIN, JAN1 + 2 * MIN]);
    assert_eq!(st.last_outcome, Some(Outcome::Succeeded));
    let text = logs.text();
    assert!(text.contains("cannot save the job state"), "{text}");
    assert!(text.contains("not-a-dir"), "{text}");
}

#[test]
fn the_handle_can_be_shared_across_tasks() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Scheduler>();
    shareable::<SystemClock>();
    shareable::<TokioClock>();
}
