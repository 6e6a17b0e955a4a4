//! The load processes of a cluster run (one per node, all on this machine)
//! meet before each phase through files in a directory they share.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::Args;

/// How long load processes of a cluster run wait for each other at one step
/// (the longest is the ramp of the slowest).
const MEET_TIMEOUT: Duration = Duration::from_secs(900);
/// How often a waiting load process looks for the others.
const MEET_POLL: Duration = Duration::from_millis(5);

/// The load processes of one run against a cluster, one per node, all on this
/// machine: they meet at named steps through files in a directory they share,
/// each leaving a JSON payload for the others. A run against one server is a
/// cluster of one, whose meetings return at once.
pub struct Cluster {
    /// `None` for a cluster of one.
    dir: Option<PathBuf>,
    pub size: usize,
    /// This process's number; number 0, the prober, sends the probes.
    pub index: usize,
}

impl Cluster {
    pub fn of(args: &Args) -> Result<Cluster> {
        let Some(dir) = &args.cluster_dir else {
            return Ok(Cluster {
                dir: None,
                size: 1,
                index: 0,
            });
        };
        let (size, index) = (args.cluster_size as usize, args.cluster_index as usize);
        if index >= size {
            bail!("--cluster-index {index} must be below --cluster-size {size}");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Cluster {
            dir: Some(dir.clone()),
            size,
            index,
        })
    }

    pub fn is_prober(&self) -> bool {
        self.index == 0
    }

    pub fn is_many(&self) -> bool {
        self.size > 1
    }

    /// Leaves `payload` at `step` and returns everyone's, in process order,
    /// once all have arrived; fails if one of them has given up.
    pub async fn meet(&self, step: &str, payload: Value) -> Result<Vec<Value>> {
        let Some(dir) = &self.dir else {
            return Ok(vec![payload]);
        };
        let path = |index: usize| dir.join(format!("{step}.{index}.json"));
        // Written aside and renamed, so that no one reads half of it.
        let aside = dir.join(format!(".{step}.{}.json", self.index));
        std::fs::write(&aside, serde_json::to_vec(&payload)?)
            .and_then(|()| std::fs::rename(&aside, path(self.index)))
            .with_context(|| format!("cannot write {}", path(self.index).display()))?;
        let mut all: Vec<Option<Value>> = vec![None; self.size];
        let deadline = Instant::now() + MEET_TIMEOUT;
        loop {
            for (index, slot) in all.iter_mut().enumerate() {
                if slot.is_none() {
                    *slot = match std::fs::read(path(index)) {
                        Ok(bytes) => Some(serde_json::from_slice(&bytes)?),
                        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
                        Err(err) => return Err(err.into()),
                    };
                }
            }
            if all.iter().all(Option::is_some) {
                return Ok(all.into_iter().flatten().collect());
            }
            for index in 0..self.size {
                if let Ok(why) = std::fs::read_to_string(dir.join(format!("failed.{index}"))) {
                    bail!("load process {index} failed: {}", why.trim());
                }
            }
            if Instant::now() > deadline {
                let late: Vec<usize> = (0..self.size).filter(|&i| all[i].is_none()).collect();
                bail!("load processes {late:?} did not reach {step:?} within {MEET_TIMEOUT:?}");
            }
            tokio::time::sleep(MEET_POLL).await;
        }
    }

    /// Tells the others that this process has failed, so they stop waiting.
    pub fn give_up(&self, why: &str) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::write(dir.join(format!("failed.{}", self.index)), why);
        }
    }

    /// How this process signs what it prints to stderr.
    pub fn who(&self) -> String {
        if self.is_many() {
            format!("lobby-load {}/{}", self.index, self.size)
        } else {
            "lobby-load".to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cluster;
    use serde_json::{Value, json};

    /// `size` load processes meeting in a fresh directory.
    fn cluster_of(size: usize) -> Vec<Cluster> {
        let dir = std::env::temp_dir().join(format!(
            "lobby-load-test-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        (0..size)
            .map(|index| Cluster {
                dir: Some(dir.clone()),
                size,
                index,
            })
            .collect()
    }

    #[tokio::test]
    async fn processes_that_meet_each_get_every_payload_in_process_order() {
        let cluster = cluster_of(3);
        std::fs::create_dir_all(cluster[0].dir.as_ref().expect("a dir")).expect("a temp dir");
        let met = futures_util::future::join_all(
            cluster
                .iter()
                .rev()
                .map(|c| c.meet("step", json!(c.index * 10))),
        )
        .await;
        let _ = std::fs::remove_dir_all(cluster[0].dir.as_ref().expect("a dir"));
        for all in met {
            assert_eq!(
                all.expect("everyone came"),
                [json!(0), json!(10), json!(20)]
            );
        }
    }

    #[tokio::test]
    async fn a_meeting_ends_in_an_error_once_another_process_has_given_up() {
        let cluster = cluster_of(2);
        std::fs::create_dir_all(cluster[0].dir.as_ref().expect("a dir")).expect("a temp dir");
        cluster[1].give_up("no server");
        let err = cluster[0]
            .meet("step", Value::Null)
            .await
            .expect_err("process 1 is gone");
        let _ = std::fs::remove_dir_all(cluster[0].dir.as_ref().expect("a dir"));
        assert!(err.to_string().contains("load process 1 failed: no server"));
    }
}
