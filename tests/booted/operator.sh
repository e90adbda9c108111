#!/bin/bash
# What an operator does with chromaprod on a Debian host that runs systemd,
# run inside a booted container by tests/suite/booted.rs (as the oneshot
# unit chromaprod-booted-test.service, which powers the machine off after).
#
#   /srv/chromaprod-test/   read-only: params.env, the .debs, a migration
#   /srv/results/           written: `results` (one line per step: "ok STEP"
#                           or "FAIL STEP"), STEP.log (each step's commands
#                           and output), `done` at the end
#
# Steps run in order, each in a subshell with `set -e -x`; a failed step is
# recorded and the next one runs (a later step that needs the earlier one's
# state fails too, with its own log). Where docs/runbook.md has the commands,
# they are taken from the installed runbook (/usr/share/doc/chromaprod/) by
# their `runbook-test` marker and run as written.
set -uo pipefail
T=/srv/chromaprod-test
R=/srv/results
# shellcheck source=/dev/null
. "$T/params.env" # CHROMA, VERSION, NEXT, ARCH
RUNBOOK=/usr/share/doc/chromaprod/runbook.md
WORK=/root/operator
# The runbook's operator shell (root, the credentials directory).
export CREDENTIALS_DIRECTORY=/etc/chromaprod/credentials
mkdir -p "$WORK"
cd "$WORK" || exit 1

# The block after `<!-- runbook-test: NAME -->` in the installed runbook.
block() {
    awk -v tag="<!-- runbook-test: $1 -->" '
        $0 == tag { found = 1; next }
        found && /^```/ { if (inside) exit; inside = 1; next }
        inside { print }' "$RUNBOOK"
}
# Runs a runbook block as written, in the operator shell.
runbook() {
    local text
    text="$(block operator-shell; block "$1")"
    [ -n "$(block "$1")" ] || { echo "no block $1 in $RUNBOOK"; return 1; }
    printf '%s\n' "--- runbook block $1:" "$(block "$1")"
    bash -e -o pipefail -c "$text" </dev/null
}
# Fails the step with a message when a condition does not hold.
want() {
    local what="$1"
    shift
    if ! "$@"; then
        echo "WANTED: $what"
        return 1
    fi
}
# Waits up to $1 seconds for a command to succeed.
wait_for() {
    local secs="$1"
    shift
    for _ in $(seq 1 "$((secs * 5))"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    "$@"
}
prop() { systemctl show -p "$1" --value chromaprod; }
# For wait_for, which re-runs its command: a property has a value.
is_prop() { test "$(prop "$1")" = "$2"; }
is_running() { test "$(prop ActiveState)/$(prop SubState)" = active/running; }
config=/etc/chromaprod/chromaprod.toml
# Sets KEY (in [SECTION]) to VALUE in the configuration, as an editor would.
set_key() { # set_key SECTION KEY VALUE
    if sed -n "/^\[$1\]/,/^\[/p" "$config" | grep -q "^#\? *$2 = "; then
        sed -i "/^\[$1\]/,/^\[/ s|^#\? *$2 = .*|$2 = $3|" "$config"
    else
        sed -i "/^\[$1\]/a $2 = $3" "$config"
    fi
    grep -qxF "$2 = $3" "$config"
}
# Asks the host (tests/suite/booted.rs) to pause or resume its Chroma server.
host() {
    : >"$R/request-$1"
    for _ in $(seq 1 100); do
        [ -e "$R/done-$1" ] && return 0
        sleep 0.1
    done
    echo "the host did not answer $1"
    return 1
}

step() {
    local name="$1" rc
    # Not in a condition: there, `set -e` would not stop at a failure.
    (set -e -x; "step_$name") >"$R/$name.log" 2>&1 </dev/null
    rc=$?
    # A step that broke the configuration on purpose leaves a good copy.
    if [ -f "$WORK/good.toml" ]; then
        cp "$WORK/good.toml" "$config"
        rm "$WORK/good.toml"
    fi
    if [ "$rc" = 0 ]; then
        echo "ok $name" >>"$R/results"
    else
        echo "FAIL $name" >>"$R/results"
    fi
}

# --- the steps ---------------------------------------------------------

step_install() {
    cp "$T"/debs/*.deb .
    sudo dpkg -i "chromaprod_${VERSION}_${ARCH}.deb"
    want "the chromaprod user" getent passwd chromaprod
    want "state directory owned by chromaprod, 0700" \
        test "$(stat -c %U:%a /var/lib/chromaprod)" = chromaprod:700
    want "the unit is not enabled at installation" \
        test "$(systemctl is-enabled chromaprod || true)" = disabled
    systemctl cat chromaprod >/dev/null
}

step_configure() {
    set_key chroma endpoints "[\"$CHROMA\"]"
    runbook key-create
    # The drop-in handing the key over (runbook, "Create it").
    runbook key-credential
    # Chroma's token, a credential too (runbook, "Configure a backend").
    echo "booted-test-token-5e1f" >chroma-token
    # chroma.auth_token_file stays unset: the token is the credential.
    runbook chroma-token
    systemctl daemon-reload
}

step_first_start() {
    runbook first-start
    want "active (running)" is_running
    local status
    status="$(prop StatusText)"
    want "READY with STATUS=ready: 1/1 endpoints up" test "${status#ready: 1/1 endpoints up}" != "$status"
    # Below Chroma's CPU priority: the unit's weight, and every thread at
    # nice 10 (/proc/PID/task/TID/stat: the 17th field after "(comm) "; a
    # thread that ends while the loop runs is skipped).
    want "the unit's CPU weight is 20" is_prop CPUWeight 20
    local pid
    pid="$(prop MainPID)"
    for t in /proc/"$pid"/task/*; do
        sed 's/.*) //' "$t/stat" 2>/dev/null | cut -d' ' -f17 || true
    done | sort -u | tee nice.out
    want "the daemon runs at nice 10" test "$(cat nice.out)" = 10
    # ... and under SCHED_BATCH (the 39th field after "(comm) ", policy 3).
    for t in /proc/"$pid"/task/*; do
        sed 's/.*) //' "$t/stat" 2>/dev/null | cut -d' ' -f39 || true
    done | sort -u | tee policy.out
    want "the daemon's threads are SCHED_BATCH" test "$(cat policy.out)" = 3
    # The credentials, readable only by the service's user.
    local cred=/run/credentials/chromaprod.service
    stat -c '%U %a %n' $cred/*
    want "the key credential, for no other user" test "$(stat -c %a $cred/backup-key)" -le 440
    want "the token credential, for no other user" test "$(stat -c %a $cred/chroma-token)" -le 440
    chromaprod doctor | tee doctor.out
    want "an encrypted repository" grep -q "repository .*encrypted" doctor.out
    chromaprod backups list | tee backups-list
    want "one full snapshot" test "$(grep -c ' full ' backups-list)" = 1
}

step_socket_group() {
    useradd --create-home alice
    useradd --create-home bob
    sudo usermod -aG chromaprod alice
    runuser -u alice -- chromaprod status
    runuser -u alice -- chromaprod backup --wait
    if runuser -u bob -- chromaprod status >bob.out 2>&1; then
        cat bob.out
        echo "WANTED: bob (not in the group) is refused"
        return 1
    fi
    cat bob.out
    want "bob is told why" grep -qi "permission denied" bob.out
}

step_restore() {
    chromaprod restore latest --collection docs --as docs_restored
    chromaprod backups verify latest --full
}

# Reload three ways; each shows in `chromaprod status` as the last reload.
reloads() { journalctl -u chromaprod -o cat --no-pager | grep -c "configuration reloaded" || true; }
reloaded_since() { test "$(reloads)" -gt "$1"; }
step_reload() {
    chromaprod --json status
    local n0 n1
    n0="$(reloads)"
    # 1. the file watcher (daemon.watch_config, polled every 5 s)
    set_key pool max_connections 11
    wait_for 20 reloaded_since "$n0"
    n1="$(reloads)"
    # 2. systemctl reload
    set_key pool max_connections 12
    systemctl reload chromaprod
    wait_for 5 reloaded_since "$n1"
    n1="$(reloads)"
    # 3. chromaprod reload
    set_key pool max_connections 13
    chromaprod reload
    wait_for 5 reloaded_since "$n1"
}

step_bad_reload() {
    local pid
    pid="$(prop MainPID)"
    cp "$config" "$WORK/good.toml"
    echo 'this is = = not toml' >>"$config"
    if systemctl reload chromaprod; then
        echo "WANTED: systemctl reload fails on a bad file"
        return 1
    fi
    systemctl status chromaprod --no-pager | tee status.out || true
    want "ExecReload exited 78" grep -q "ExecReload=.*status=78" status.out
    want "still the same daemon" test "$(prop MainPID)" = "$pid"
    want "still active" test "$(prop ActiveState)" = active
    chromaprod status
}

step_bad_start() {
    cp "$config" "$WORK/good.toml"
    systemctl stop chromaprod
    echo 'this is = = not toml' >>"$config"
    if systemctl start chromaprod; then
        echo "WANTED: the start fails on a bad file"
        return 1
    fi
    sleep 7 # longer than RestartSec=5s
    systemctl status chromaprod --no-pager | tee status.out || true
    want "failed" test "$(prop ActiveState)" = failed
    want "exit 78" test "$(prop ExecMainStatus)" = 78
    want "not restarted" test "$(prop NRestarts)" = 0
    cp "$WORK/good.toml" "$config"
    systemctl reset-failed chromaprod
    systemctl start chromaprod
    want "started again" test "$(prop ActiveState)" = active
}

step_watchdog() {
    local pid
    pid="$(prop MainPID)"
    want "no restart yet" test "$(prop NRestarts)" = 0
    kill -STOP "$pid"
    # WatchdogSec=30s, then SIGABRT (a stopped process takes the SIGKILL
    # after TimeoutAbortSec), then RestartSec=5s.
    wait_for 150 is_prop NRestarts 1
    wait_for 60 is_running
    want "a new daemon" test "$(prop MainPID)" != "$pid"
    journalctl -u chromaprod --no-pager | grep -i watchdog | tee wd.out
    want "the journal says watchdog" test -s wd.out
    chromaprod status
}

snapshots() { chromaprod backups list | grep -cE ' (full|incremental|collection) ' || true; }
step_stop_during_backup() {
    local before start took
    before="$(snapshots)"
    # Chroma stops answering: the backup stays in flight.
    host chroma-pause
    chromaprod backup --full >backup.out 2>&1 &
    wait_for 20 sh -c 'chromaprod jobs | grep -q running'
    chromaprod jobs
    start=$(date +%s%N)
    systemctl stop chromaprod
    took=$((($(date +%s%N) - start) / 1000000))
    host chroma-resume
    echo "stop took $took ms"
    wait || true
    # daemon.shutdown_grace is 30 s; a backup blocked in a call to a Chroma
    # that does not answer is abandoned when it ends (the call is not cut
    # short by the stop), well before systemd's SIGKILL at TimeoutStopSec=45s.
    want "stopped by the end of the 30 s grace" test "$took" -lt 32000
    want "stopped cleanly (Result=success)" test "$(prop Result)" = success
    want "inactive" test "$(prop ActiveState)" = inactive
    want "no snapshot left" test "$(snapshots)" = "$before"
}

step_auto_migrate() {
    install -m 0640 -g chromaprod "$T/migration.toml" /etc/chromaprod/migrations/0001_big_cosine.toml
    set_key migrations auto_migrate true
    set_key migrations restore_point false
    # A start timeout far below the migration's run: the daemon extends it.
    mkdir -p /etc/systemd/system/chromaprod.service.d
    printf '[Service]\nTimeoutStartSec=3s\n' >/etc/systemd/system/chromaprod.service.d/start-timeout.conf
    systemctl daemon-reload
    systemctl stop chromaprod
    local start took
    start=$(date +%s%N)
    systemctl start chromaprod
    took=$((($(date +%s%N) - start) / 1000000))
    echo "start took $took ms"
    want "the start outlived TimeoutStartSec=3s" test "$took" -gt 3000
    want "active" test "$(prop ActiveState)" = active
    chromaprod migrate status | tee migrate.out
    want "migration 1 applied" grep -q applied migrate.out
    # READY (systemd's "Started") only after the migration was applied.
    journalctl -u chromaprod -o cat --no-pager | tee journal.out
    local applied started
    applied="$(grep -n 'migration applied' journal.out | head -1 | cut -d: -f1)"
    started="$(grep -n '^Started chromaprod' journal.out | tail -1 | cut -d: -f1)"
    want "migration applied, then Started" test -n "$applied" -a -n "$started" -a "$applied" -lt "$started"
    rm /etc/systemd/system/chromaprod.service.d/start-timeout.conf
    systemctl daemon-reload
}

step_journal() {
    journalctl -u chromaprod COLLECTION=docs --no-pager | tee j.collection
    want "COLLECTION=docs finds lines" test -s j.collection
    local job
    job="$(journalctl -u chromaprod -o verbose --no-pager MESSAGE='job finished' | sed -n 's/^ *JOB=//p' | head -1)"
    want "a job finished line has JOB=" test -n "$job"
    journalctl -u chromaprod -o verbose --no-pager JOB="$job" | tee j.job
    for f in JOB KIND STATE; do
        want "the job line has $f" grep -q "^ *$f=" j.job
    done
    journalctl -u chromaprod -o verbose --no-pager | grep "^ *ELAPSED_MS=" | tee j.elapsed
    want "lines with ELAPSED_MS" test -s j.elapsed
    journalctl -u chromaprod MIGRATION=1 --no-pager | tee j.migration
    want "MIGRATION=1 finds the applied line" grep -q "migration applied" j.migration
    journalctl -u chromaprod -p warning --no-pager | tee j.warning
    want "-p warning finds the rejected reload" grep -qi "reload" j.warning
}

step_security() {
    systemd-analyze security chromaprod --no-pager | tee sec.out
    local score
    score="$(sed -n 's/.*Overall exposure level for chromaprod.service: \([0-9.]*\).*/\1/p' sec.out)"
    want "an exposure score" test -n "$score"
    want "exposure $score <= 1.5" awk -v s="$score" 'BEGIN { exit !(s <= 1.5) }'
}

step_upgrade() {
    local pid
    systemctl is-active chromaprod
    echo "# edited by the operator" >>"$config"
    pid="$(prop MainPID)"
    sudo dpkg -i "chromaprod_${NEXT}_${ARCH}.deb"
    want "version $NEXT installed" test "$(dpkg-query -W -f '${Version}' chromaprod)" = "$NEXT"
    wait_for 30 is_running
    want "restarted on the new binary" test "$(prop MainPID)" != "$pid"
    want "the conffile edit kept" grep -q "^# edited by the operator" "$config"
    want "no .dpkg-dist" test ! -e "$config.dpkg-dist"
    chromaprod status
}

step_remove_purge() {
    sudo dpkg -r chromaprod
    want "stopped" test "$(systemctl is-active chromaprod || true)" != active
    want "the program is gone" test ! -e /usr/bin/chromaprod
    want "the configuration stays" test -f "$config"
    sudo dpkg -P chromaprod
    want "the configuration is gone" test ! -e "$config"
    want "the repository stays" test -f /var/lib/chromaprod/backups/config
    want "the key stays" test -f /etc/chromaprod/credentials/backup-key
}

for s in install configure first_start socket_group restore reload bad_reload bad_start \
    watchdog stop_during_backup auto_migrate journal security upgrade remove_purge; do
    step "$s"
done
journalctl -b --no-pager >"$R/journal.txt" 2>&1
: >"$R/done"
