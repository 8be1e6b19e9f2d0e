//! Failpoints for the robustness tests, as etcd's gofail ones: named points in the storage
//! and apply paths where a test can make the member panic (or sleep, or return early),
//! armed through the `FAILPOINTS` environment variable, `name=actions;name=actions`, in the
//! `fail` crate's syntax (e.g. `walAfterFsync=20*off->panic`: the 21st time the point is
//! reached, panic). They exist only in a build with the `failpoints` feature; a build
//! without it has none and ignores `FAILPOINTS`.
//!
//! A panic at a point ends the process, as a Go panic ends etcd: with points armed, the
//! panic hook SIGKILLs the process after printing the message, so no thread survives the
//! one that panicked and the member is left as a crash leaves it.
//!
//! The points, each named after etcd's nearest one:
//!
//! | point | where |
//! |---|---|
//! | `walBeforeAppend`, `walAfterAppend` | `wal::Wal::append`: before / after the records are written to the journal segment |
//! | `walBeforeFsync`, `walAfterFsync` | `wal::Wal::sync`: before / after the journal's fsync |
//! | `applyBeforeEntry`, `applyAfterEntry` | `apply::StateMachine::apply`: before / after one committed request is applied (its writes not yet handed to the backend) |
//! | `backendBeforeWrite`, `backendAfterWrite` | the backend writer (`writer.rs`): before / after a batch of state-machine writes lands in sled |
//! | `compactBeforeApply`, `compactAfterApply` | `apply`: before / after a compaction is applied |
//! | `raftBeforeApplySnap`, `raftAfterApplySnap` | the raft loop: before / after a snapshot from the leader is installed (it is journaled first) |
//! | `raftBeforeSaveSnap` | the leader: before it encodes its state machine as a snapshot for a lagging follower |

/// The points a build with the feature has, as listed above.
pub const POINTS: &[&str] = &[
    "walBeforeAppend",
    "walAfterAppend",
    "walBeforeFsync",
    "walAfterFsync",
    "applyBeforeEntry",
    "applyAfterEntry",
    "backendBeforeWrite",
    "backendAfterWrite",
    "compactBeforeApply",
    "compactAfterApply",
    "raftBeforeApplySnap",
    "raftAfterApplySnap",
    "raftBeforeSaveSnap",
];

/// Arms the points `FAILPOINTS` names; an unknown point or action is an error naming it.
/// With any armed, a panic anywhere aborts the process (module doc).
#[cfg(feature = "failpoints")]
pub fn setup_from_env() -> Result<(), String> {
    let Ok(spec) = std::env::var("FAILPOINTS") else {
        return Ok(());
    };
    let mut armed = 0;
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, actions)) = item.split_once('=') else {
            return Err(format!("FAILPOINTS: {item:?} is not name=actions"));
        };
        let name = name.trim();
        if !POINTS.contains(&name) {
            return Err(format!(
                "FAILPOINTS: no failpoint {name:?} (there are: {})",
                POINTS.join(", ")
            ));
        }
        fail::cfg(name, actions.trim()).map_err(|e| format!("FAILPOINTS: {name}: {e}"))?;
        armed += 1;
    }
    if armed > 0 {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            kill_self();
        }));
    }
    Ok(())
}

/// Ends the process with SIGKILL, as the fault tests kill members (an abort would leave a
/// core file where core dumps are on).
#[cfg(feature = "failpoints")]
#[allow(unsafe_code)] // kill(2) on ourselves: std has no call for it
fn kill_self() -> ! {
    // SAFETY: kill and getpid only make system calls; SIGKILL cannot be caught.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

/// Without the `failpoints` feature there is nothing to arm.
#[cfg(not(feature = "failpoints"))]
pub fn setup_from_env() -> Result<(), String> {
    Ok(())
}
