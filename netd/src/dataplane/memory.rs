//! An in-memory [`Dataplane`] for unit tests: a [`KernelState`] behind a mutex, with optional
//! injected failures so rollback paths can be exercised.

use std::sync::Mutex;

use super::{Dataplane, Entry, KernelState, fdb_key};
use crate::error::{Error, Result};

/// Test dataplane. `fail_on` makes every upsert of a matching entry fail.
#[derive(Default)]
pub struct MemoryDataplane {
    pub state: Mutex<KernelState>,
    pub fail_on: Mutex<Option<Entry>>,
}

impl MemoryDataplane {
    pub fn snapshot(&self) -> KernelState {
        self.state.lock().expect("test mutex").clone()
    }
}

impl Dataplane for MemoryDataplane {
    async fn observe(&self) -> Result<KernelState> {
        Ok(self.snapshot())
    }

    async fn upsert(&self, entry: &Entry) -> Result<()> {
        if *self.fail_on.lock().expect("test mutex") == Some(*entry) {
            return Err(Error::Kernel(format!("injected failure for {entry:?}")));
        }
        let mut s = self.state.lock().expect("test mutex");
        match *entry {
            Entry::Neigh { ip, mac } => {
                s.neighs.insert(ip, mac);
            }
            Entry::Fdb { mac, dst } => {
                s.fdb.insert(fdb_key(mac, dst), dst);
            }
            Entry::Route { dst, hop } => {
                s.routes.insert(dst, hop);
            }
        }
        Ok(())
    }

    async fn remove(&self, entry: &Entry) -> Result<()> {
        let mut s = self.state.lock().expect("test mutex");
        match entry {
            Entry::Neigh { ip, .. } => s.neighs.remove(ip).map(|_| ()),
            Entry::Fdb { mac, dst } => s.fdb.remove(&fdb_key(*mac, *dst)).map(|_| ()),
            Entry::Route { dst, .. } => s.routes.remove(dst).map(|_| ()),
        };
        Ok(())
    }
}
