//! Who runs a swap: this process, another on this host, or one elsewhere.

use super::SwapEntry;
pub(super) use crate::host::hostname;

/// `boot id/start ticks` of a live process, or `None` if it is gone (or a zombie).
pub(super) fn process_identity(pid: u32) -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the
    // first, the start time (field 22) the twentieth.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    Some(format!("{}/{}", boot.trim(), fields.get(19)?))
}

/// Record ids of the swaps this process is running now.
pub(super) static IN_FLIGHT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Marks a swap of this process as running until dropped.
pub(super) struct InFlight(String);

impl InFlight {
    pub(super) fn enter(entry: &SwapEntry) -> Self {
        let id = entry.record_id();
        IN_FLIGHT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(id.clone());
        InFlight(id)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut v = IN_FLIGHT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = v.iter().position(|x| *x == self.0) {
            v.swap_remove(i);
        }
    }
}

/// How long an entry written on another host is taken as still running. Its
/// process cannot be asked; a swap is two renames, done in well under a
/// second, so an entry older than this was left by a crash.
pub(super) const OTHER_HOST_GRACE: std::time::Duration = std::time::Duration::from_secs(120);

/// Whether the swap of `entry` is still running: in this process, a swap
/// not yet returned; on this host, a live process that wrote it; on another
/// host, an entry younger than [`OTHER_HOST_GRACE`] (or of unknown age).
pub(super) fn runner_alive(entry: &SwapEntry) -> bool {
    if entry.host != hostname() {
        let age = chrono::DateTime::parse_from_rfc3339(&entry.started_at)
            .ok()
            .and_then(|t| {
                (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
                    .to_std()
                    .ok()
            });
        return age.is_none_or(|a| a < OTHER_HOST_GRACE);
    }
    let me = std::process::id();
    if entry.host == hostname() && entry.pid == me {
        let mine = process_identity(me).is_some_and(|p| p == entry.process);
        if mine {
            return IN_FLIGHT
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&entry.record_id());
        }
    }
    entry.host == hostname()
        && !entry.process.is_empty()
        && process_identity(entry.pid).as_deref() == Some(entry.process.as_str())
}
