//! Network namespaces: opening one by path and running work inside it. This is the one place
//! that enters a namespace. Work runs on a new OS thread that has joined it ([`Netns::run`],
//! [`Netns::spawn`]), so the calling thread (and any async runtime it belongs to) never changes
//! namespace; a thread made for the purpose (a runtime's worker, a benchmark's) may join one
//! itself ([`Netns::enter_this_thread`]). Sockets opened inside belong to the namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use crate::error::{Error, Result};

/// An open network namespace (`/run/netns/<name>`, `/proc/<pid>/ns/net`, ...).
#[derive(Debug)]
pub struct Netns {
    path: String,
    file: File,
}

impl Netns {
    /// Opens the namespace at `path`; `Ok(None)` when nothing is there (a namespace gone).
    pub fn open(path: impl AsRef<Path>) -> Result<Option<Netns>> {
        let path = path.as_ref();
        match File::open(path) {
            Ok(file) => Ok(Some(Netns {
                path: path.display().to_string(),
                file,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("open netns", path, e)),
        }
    }

    /// Opens the named namespace `/run/netns/<name>` (as `ip netns add` makes them); it must
    /// exist.
    pub fn named(name: &str) -> Result<Netns> {
        let path = Path::new("/run/netns").join(name);
        Netns::open(&path)?.ok_or_else(|| {
            Error::io(
                "open netns",
                &path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })
    }

    /// The open namespace, for handing it to the kernel (e.g. moving a link into it).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Where the namespace was opened from.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Runs `f` on a new thread that has joined this namespace and waits for its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        self.spawn(f)?.join().map_err(|_| Error::ThreadPanicked {
            path: self.path.clone(),
        })?
    }

    /// Starts `f` on a new thread that has joined this namespace; join the handle for its
    /// result (or the error entering the namespace).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Result<T>>> {
        let ns = Netns {
            path: self.path.clone(),
            file: self
                .file
                .try_clone()
                .map_err(|e| Error::io("dup netns fd", Path::new(&self.path), e))?,
        };
        Ok(std::thread::spawn(move || {
            ns.enter_this_thread()?;
            Ok(f())
        }))
    }

    /// Moves the calling thread into this namespace for the rest of its life. Only for threads
    /// made for that purpose: a thread that serves anything else would take it along.
    pub fn enter_this_thread(&self) -> Result<()> {
        nix::sched::setns(self.file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(
            |source| Error::Enter {
                path: self.path.clone(),
                source,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_inside_and_leaves_the_caller_alone() {
        let own = std::fs::read_link("/proc/thread-self/ns/net").expect("own netns");
        // Our own namespace, entered through /proc: the work sees the same one.
        let ns = Netns::open("/proc/self/ns/net")
            .expect("open")
            .expect("exists");
        let seen = ns
            .run(|| std::fs::read_link("/proc/thread-self/ns/net").expect("netns"))
            .expect("run");
        assert_eq!(seen, own);
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").expect("netns"),
            own
        );
        assert!(
            Netns::open("/nonexistent/netns")
                .expect("absent is fine")
                .is_none()
        );
        assert!(matches!(
            Netns::named("no-such-ns-here"),
            Err(Error::Io { .. })
        ));
        assert!(matches!(
            ns.run(|| panic!("inside")),
            Err(Error::ThreadPanicked { .. })
        ));
    }
}
