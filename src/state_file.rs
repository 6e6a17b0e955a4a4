//! `--state-file`: one process's rooms written at shutdown and read back at
//! start, so that a restart (a deploy) is invisible: the people online stay
//! online, their tokens stay good (kept as their SHA-256 only, in a file only
//! its owner can read), and each room's ids go on from where they were, so a
//! client that resumes with `Last-Event-ID` within its grace period is told
//! nothing new. A file that is missing, older than the grace period, or not
//! one lobby wrote means a clean start with a log line, never a failed start
//! or half of a file loaded; a file read is removed, so it is read once.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::presence::{Rooms, Saved};

/// Which form of the file this lobby writes and reads.
const FORM: u32 = 1;

#[derive(Serialize, Deserialize)]
struct StateFile {
    /// What this file is, and which form of it.
    lobby_state: u32,
    /// When it was written, in milliseconds since 1970.
    written_at_ms: u64,
    #[serde(flatten)]
    saved: Saved,
}

/// Puts back in `rooms` (new, empty) who the file at `path` lists, with what
/// is left of `grace` since it was written; logs what it did, and why not.
pub fn load(path: &Path, rooms: &Rooms, grace: Duration) {
    let shown = path.display();
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            tracing::info!(path = %shown, "no state file yet: a clean start");
            return;
        }
        Err(err) => {
            tracing::warn!(path = %shown, %err, "cannot read the state file: a clean start");
            return;
        }
    };
    // Read once: a start after this one must not bring back who has left since.
    if let Err(err) = fs::remove_file(path) {
        tracing::warn!(path = %shown, %err, "cannot remove the state file after reading it");
    }
    let file = match serde_json::from_str::<StateFile>(&text) {
        Ok(file) if file.lobby_state == FORM => file,
        Ok(file) => {
            let form = file.lobby_state;
            tracing::warn!(path = %shown, form, "the state file is of another form: a clean start");
            return;
        }
        Err(err) => {
            tracing::warn!(path = %shown, %err, "the state file is not one lobby wrote: a clean start");
            return;
        }
    };
    let age = Duration::from_millis(now_ms().saturating_sub(file.written_at_ms));
    let Some(left) = grace.checked_sub(age).filter(|left| !left.is_zero()) else {
        tracing::info!(
            path = %shown, age_ms = age.as_millis() as u64, grace_ms = grace.as_millis() as u64,
            "the state file is older than the grace period, so everyone in it has left: a clean start"
        );
        return;
    };
    let room_count = file.saved.rooms.len();
    match rooms.restore(file.saved, left) {
        Ok(people) => tracing::info!(
            path = %shown, people, rooms = room_count, age_ms = age.as_millis() as u64,
            "put back who was online from the state file"
        ),
        Err(err) => {
            tracing::warn!(path = %shown, %err, "the state file does not hold up: a clean start");
        }
    }
}

/// Writes who is online in `rooms` to `path`, readable by its owner only,
/// whole or not at all (a file beside it, then renamed over it).
pub fn save(path: &Path, rooms: &Rooms) -> io::Result<()> {
    let saved = rooms.save();
    let (people, room_count) = (
        saved
            .rooms
            .iter()
            .map(|room| room.people.len())
            .sum::<usize>(),
        saved.rooms.len(),
    );
    let file = StateFile {
        lobby_state: FORM,
        written_at_ms: now_ms(),
        saved,
    };
    let partial = partial_path(path);
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)?;
    out.write_all(&serde_json::to_vec(&file).map_err(io::Error::other)?)?;
    out.sync_all()?;
    fs::rename(&partial, path)?;
    tracing::info!(path = %path.display(), people, rooms = room_count, "wrote who is online to the state file");
    Ok(())
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".partial");
    path.with_file_name(name)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
