//! A user id for each run, when the worker is root. Commands of concurrent runs then cannot
//! read each other's directories or `/proc` entries, nor signal each other, and
//! `RLIMIT_NPROC`, which counts a user's processes, bounds one run alone. The ids need no
//! entry in `/etc/passwd`. A run claims its id with an exclusive `flock` on a file named after
//! it, so worker processes on one machine never hand out the same id at once; the kernel drops
//! the lock if the worker dies.

use std::{
    fs::{DirBuilder, File, OpenOptions},
    io,
    os::{fd::AsRawFd, unix::fs::DirBuilderExt},
    path::PathBuf,
};

use crate::RunAs;

/// Where claims are kept: one place for every worker process of the machine.
const CLAIMS: &str = "/run/taskfleet-executor-uids";

#[derive(Debug, Clone)]
pub struct UidPool {
    first: u32,
    count: u32,
    claims: PathBuf,
}

/// A claimed id; dropping it frees the id.
#[derive(Debug)]
pub struct UidLease {
    pub run_as: RunAs,
    _lock: File,
}

impl UidPool {
    /// `range` is `FIRST-LAST`, inclusive; root (0) may not be in it.
    pub fn parse(range: &str) -> Result<UidPool, String> {
        let bad = || format!("`{range}` is not a range of user ids like 2000000000-2000065535");
        let (first, last) = range.split_once('-').ok_or_else(bad)?;
        let first: u32 = first.trim().parse().map_err(|_| bad())?;
        let last: u32 = last.trim().parse().map_err(|_| bad())?;
        if first == 0 || last < first || last == u32::MAX {
            return Err(bad());
        }
        Ok(UidPool {
            first,
            count: last - first + 1,
            claims: PathBuf::from(CLAIMS),
        })
    }

    /// Claims an id no other run on this machine holds, starting from a random one.
    pub fn claim(&self) -> io::Result<UidLease> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.claims)?;
        let start = random_below(self.count);
        for step in 0..self.count {
            let uid = self.first + (start + step) % self.count;
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(self.claims.join(uid.to_string()))?;
            // SAFETY: flock takes a descriptor we own and flags.
            let claimed = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if claimed == 0 {
                return Ok(UidLease {
                    run_as: RunAs { uid, gid: uid },
                    _lock: lock,
                });
            }
        }
        Err(io::Error::other(format!(
            "all {} executor user ids are in use",
            self.count
        )))
    }
}

/// Random enough to spread claims: the clock's nanoseconds and the process id.
fn random_below(count: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ std::process::id().rotate_left(16)) % count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_two_ids_without_root() {
        assert_eq!(UidPool::parse("100-199").unwrap().count, 100);
        for bad in ["0-10", "10", "20-10", "a-b", "1-4294967295"] {
            assert!(UidPool::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_id_is_held_by_one_run_at_a_time() {
        let dir = std::env::temp_dir().join(format!("taskfleet-uids-{}", std::process::id()));
        let pool = UidPool {
            claims: dir.clone(),
            ..UidPool::parse("5000-5001").unwrap()
        };
        let a = pool.claim().unwrap();
        let b = pool.claim().unwrap();
        assert_ne!(a.run_as.uid, b.run_as.uid);
        assert!(pool.claim().is_err(), "both ids are held");
        drop(a);
        assert!(pool.claim().is_ok(), "a dropped lease frees its id");
        let _ = std::fs::remove_dir_all(dir);
    }
}
