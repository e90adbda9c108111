//! Runs on time, never overlapped, caught up after downtime, rescheduled.

use super::*;

#[tokio::test(start_paused = true)]
async fn every_minute_for_ten_minutes_runs_ten_times_on_the_minute() {
    let dir = tempfile::tempdir().expect("test");
    let h = start_with(
        vec![spec(JobKind::IncrementalBackup, EVERY_MINUTE)],
        &state_in(&dir),
        JAN1 + 30 * SEC,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 10 * MIN + 30 * SEC).await;
    let runner = h.stop().await;
    let want: Vec<i64> = (1..=10).map(|m| JAN1 + m * MIN).collect();
    assert_eq!(runner.times(), want);
    assert!(runner
        .calls()
        .iter()
        .all(|c| c.kind == JobKind::IncrementalBackup && c.trigger == Trigger::Schedule));
}

#[tokio::test(start_paused = true)]
async fn a_slow_run_is_never_overlapped_and_skipped_fires_are_counted() {
    let dir = tempfile::tempdir().expect("test");
    let h = start_with(
        vec![spec(JobKind::FullBackup, EVERY_MINUTE)],
        &state_in(&dir),
        JAN1 + 30 * SEC,
        |r| r.work = Duration::from_secs(90),
    );
    run_until(&h.clock, JAN1 + 2 * MIN + 10 * SEC).await;
    // Mid-run: status says so.
    assert!(h.status(JobKind::FullBackup).running);
    run_until(&h.clock, JAN1 + 10 * MIN + 30 * SEC).await;
    let st = h.status(JobKind::FullBackup);
    let runner = h.stop().await;
    // Runs at minutes 1, 3, 5, 7, 9; fires at 2, 4, 6, 8, 10 find a run going.
    let times = runner.times();
    assert_eq!(times, [1, 3, 5, 7, 9].map(|m| JAN1 + m * MIN).to_vec());
    assert!(times.windows(2).all(|w| w[1] - w[0] >= 90 * SEC));
    assert_eq!(runner.max_active.load(Ordering::SeqCst), 1);
    assert_eq!(st.skipped_fires, 5);
}

#[tokio::test(start_paused = true)]
async fn a_missed_job_is_caught_up_once_after_downtime() {
    let dir = tempfile::tempdir().expect("test");
    let state = state_in(&dir);
    // First life: runs at 01:00, stops at 01:30.
    let h = start_with(
        vec![spec(JobKind::FullBackup, HOURLY)],
        &state,
        JAN1 + 30 * MIN,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 90 * MIN).await;
    let first = h.stop().await;
    assert_eq!(first.times(), vec![JAN1 + HOUR]);
    assert_eq!(
        read_state(&state)["jobs"]["full_backup"]["last_run_ms"],
        JAN1 + HOUR
    );

    // Down for five hours (fires at 02:00 … 06:00 missed); restart at 06:30.
    let h = start_with(
        vec![spec(JobKind::FullBackup, HOURLY)],
        &state,
        JAN1 + 6 * HOUR + 30 * MIN,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 8 * HOUR + 30 * MIN).await;
    let second = h.stop().await;
    assert_eq!(
        second.calls(),
        vec![
            Call {
                kind: JobKind::FullBackup,
                trigger: Trigger::CatchUp,
                at: JAN1 + 6 * HOUR + 30 * MIN
            },
            Call {
                kind: JobKind::FullBackup,
                trigger: Trigger::Schedule,
                at: JAN1 + 7 * HOUR
            },
            Call {
                kind: JobKind::FullBackup,
                trigger: Trigger::Schedule,
                at: JAN1 + 8 * HOUR
            },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_restart_before_the_next_fire_catches_nothing_up() {
    let dir = tempfile::tempdir().expect("test");
    let state = state_in(&dir);
    let h = start_with(
        vec![spec(JobKind::Prune, HOURLY)],
        &state,
        JAN1 + 5 * MIN,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 61 * MIN).await;
    assert_eq!(h.stop().await.times(), vec![JAN1 + HOUR]);
    // Restart at 01:59: the 02:00 fire has not come yet.
    let h = start_with(
        vec![spec(JobKind::Prune, HOURLY)],
        &state,
        JAN1 + 119 * MIN,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 2 * HOUR).await;
    assert_eq!(h.stop().await.times(), vec![JAN1 + 2 * HOUR]);
}

#[tokio::test(start_paused = true)]
async fn no_state_means_no_catch_up_on_first_start() {
    let dir = tempfile::tempdir().expect("test");
    let state = state_in(&dir);
    let h = start_with(
        vec![spec(JobKind::FullBackup, HOURLY)],
        &state,
        JAN1 + 30 * MIN,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 59 * MIN).await;
    let st = h.status(JobKind::FullBackup);
    assert_eq!(st.last_run_ms, None);
    assert_eq!(st.next_fire_ms, Some(JAN1 + HOUR));
    assert!(h.stop().await.calls().is_empty());
    // The first start is remembered, so a later downtime is caught up even
    // though the job never ran.
    assert_eq!(
        read_state(&state)["jobs"]["full_backup"]["since_ms"],
        JAN1 + 30 * MIN
    );
    let h = start_with(
        vec![spec(JobKind::FullBackup, HOURLY)],
        &state,
        JAN1 + 3 * HOUR + 5 * MIN,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 3 * HOUR + 6 * MIN).await;
    let calls = h.stop().await.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].trigger, Trigger::CatchUp);
}

#[tokio::test(start_paused = true)]
async fn reschedule_follows_the_new_cron_and_removed_jobs_stop() {
    let dir = tempfile::tempdir().expect("test");
    let h = start_with(
        vec![
            spec(JobKind::FullBackup, HOURLY),
            spec(JobKind::Verify, "30 * * * * *"),
        ],
        &state_in(&dir),
        JAN1,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 10 * MIN + 5 * SEC).await;
    assert_eq!(
        h.runner
            .calls()
            .iter()
            .filter(|c| c.kind == JobKind::Verify)
            .count(),
        10
    );
    // Reload: full backups every minute, verify removed.
    h.sched
        .reschedule(vec![spec(JobKind::FullBackup, EVERY_MINUTE)], 0);
    let st = h.sched.status();
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].cron, EVERY_MINUTE);
    assert_eq!(st[0].next_fire_ms, Some(JAN1 + 11 * MIN));
    run_until(&h.clock, JAN1 + 13 * MIN + 45 * SEC).await;
    let runner = h.stop().await;
    let full: Vec<i64> = runner
        .calls()
        .iter()
        .filter(|c| c.kind == JobKind::FullBackup)
        .map(|c| c.at)
        .collect();
    assert_eq!(
        full,
        vec![JAN1 + 11 * MIN, JAN1 + 12 * MIN, JAN1 + 13 * MIN]
    );
    let verify_after = runner
        .calls()
        .iter()
        .filter(|c| c.kind == JobKind::Verify && c.at > JAN1 + 10 * MIN + 5 * SEC)
        .count();
    assert_eq!(verify_after, 0);
}

#[tokio::test(start_paused = true)]
async fn reschedule_neither_interrupts_a_run_nor_loses_state() {
    let dir = tempfile::tempdir().expect("test");
    let state = state_in(&dir);
    let h = start_with(
        vec![spec(JobKind::FullBackup, EVERY_MINUTE)],
        &state,
        JAN1 + 50 * SEC,
        |r| r.work = Duration::from_secs(150),
    );
    // The 00:01 run is going; reload to a cron that fires at 00:02 too.
    run_until(&h.clock, JAN1 + 90 * SEC).await;
    h.sched
        .reschedule(vec![spec(JobKind::FullBackup, "0 */2 * * * *")], 0);
    let st = h.status(JobKind::FullBackup);
    assert!(st.running);
    assert_eq!(st.last_run_ms, Some(JAN1 + MIN));
    assert_eq!(st.next_fire_ms, Some(JAN1 + 2 * MIN));
    // Remove it while still running: the run finishes and is recorded.
    run_until(&h.clock, JAN1 + 150 * SEC).await;
    h.sched.reschedule(vec![], 0);
    run_until(&h.clock, JAN1 + 10 * MIN).await;
    let runner = h.stop().await;
    // 00:02 was skipped (run going), nothing after the removal.
    assert_eq!(runner.times(), vec![JAN1 + MIN]);
    let saved = read_state(&state);
    let rec = &saved["jobs"]["full_backup"];
    assert_eq!(rec["last_outcome"], "succeeded");
    assert_eq!(rec["last_finished_ms"], JAN1 + MIN + 150 * SEC);
    assert_eq!(rec["running"], false);
}

#[tokio::test(start_paused = true)]
async fn status_reports_schedule_runs_and_failures() {
    let dir = tempfile::tempdir().expect("test");
    let h = start_with(
        vec![
            spec(JobKind::FullBackup, "0 0 3 * * *"),
            spec(JobKind::Prune, EVERY_MINUTE),
        ],
        &state_in(&dir),
        JAN1,
        |r| {
            r.fail = true;
            r.work = Duration::from_secs(10);
        },
    );
    run_until(&h.clock, JAN1 + MIN + 5 * SEC).await;
    let prune_running = h.status(JobKind::Prune);
    assert!(prune_running.running);
    assert_eq!(prune_running.last_run_ms, Some(JAN1 + MIN));
    run_until(&h.clock, JAN1 + MIN + 30 * SEC).await;
    let st = h.sched.status();
    assert_eq!(
        st[0],
        JobStatus {
            kind: JobKind::FullBackup,
            cron: "0 0 3 * * *".into(),
            next_fire_ms: Some(JAN1 + 3 * HOUR),
            last_run_ms: None,
            last_finished_ms: None,
            last_outcome: None,
            last_error: None,
            running: false,
            skipped_fires: 0,
        }
    );
    assert_eq!(
        st[1],
        JobStatus {
            kind: JobKind::Prune,
            cron: EVERY_MINUTE.into(),
            next_fire_ms: Some(JAN1 + 2 * MIN),
            last_run_ms: Some(JAN1 + MIN),
            last_finished_ms: Some(JAN1 + MIN + 10 * SEC),
            last_outcome: Some(Outcome::Failed),
            last_error: Some("repository unreachable".into()),
            running: false,
            skipped_fires: 0,
        }
    );
    let json = serde_json::to_value(&st[1]).expect("test");
    assert_eq!(json["kind"], "prune");
    assert_eq!(json["last_outcome"], "failed");
    assert_eq!(json["next_fire_ms"], JAN1 + 2 * MIN);
    h.stop().await;
}
