//! Pulls of one image that many rollouts ask for are shared. A rollout asks for an image pulled
//! no earlier than a moment of its own (when the request it carries out was taken up), and any
//! pull that began after that moment serves it: the last one, if it did, else the one under way,
//! else the next one, which begins when the one under way ends. So no rollout gets an image older
//! than its request, and a thousand stacks on one image, asked for together, make a pull or two
//! instead of a thousand (the registry counts each one, and may limit them).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::{Error, Result};

/// How long the result of a pull is kept for rollouts that asked before it began. A rollout
/// that waited longer for its turn pulls again.
const KEEP_LAST: Duration = Duration::from_secs(600);

/// A pull that those who ask for its image may join: the image's local id, or why the pull
/// failed. It runs as a task of its own, to its end even when nobody waits for it any more.
type Pull = Shared<BoxFuture<'static, std::result::Result<String, Arc<Error>>>>;

/// The pulls of one engine, by image.
#[derive(Default)]
pub(super) struct Pulls {
    images: Mutex<HashMap<String, Image>>,
}

/// The pulls of one image.
#[derive(Default)]
struct Image {
    /// Held by the pull under way, so one pull of the image runs at a time.
    lane: Arc<tokio::sync::Mutex<()>>,
    /// The pull that has not begun yet, which anyone may join.
    next: Option<Pull>,
    /// The pull under way, and when it began.
    running: Option<(Instant, Pull)>,
    /// The last pull that succeeded: when it began, and the id it got.
    last: Option<(Instant, String)>,
}

impl Pulls {
    /// The id of `image` as pulled by a pull that began no earlier than `after`: the last pull's,
    /// the one under way, or the next one (made with `pull` if none is waiting).
    pub(super) async fn pull<F>(
        self: &Arc<Self>,
        image: &str,
        after: Instant,
        pull: F,
    ) -> Result<String>
    where
        F: Future<Output = Result<String>> + Send + 'static,
    {
        let shared = {
            let mut images = self.images.lock().unwrap_or_else(|e| e.into_inner());
            let entry = images.entry(image.to_owned()).or_default();
            match (&entry.last, &entry.running, &entry.next) {
                (Some((begun, id)), _, _) if *begun >= after => return Ok(id.clone()),
                (_, Some((begun, running)), _) if *begun >= after => running.clone(),
                (_, _, Some(next)) => next.clone(),
                _ => {
                    let next = self.spawn(image, entry.lane.clone(), pull);
                    entry.next = Some(next.clone());
                    next
                }
            }
        };
        shared.await.map_err(|failure| Error::Pull {
            image: image.to_owned(),
            message: match &*failure {
                Error::Pull { message, .. } => message.clone(),
                other => other.to_string(),
            },
        })
    }

    /// Starts a task that runs `pull` once it holds `lane`.
    fn spawn<F>(self: &Arc<Self>, image: &str, lane: Arc<tokio::sync::Mutex<()>>, pull: F) -> Pull
    where
        F: Future<Output = Result<String>> + Send + 'static,
    {
        // Weak, so a pull does not keep the map that holds it alive.
        let (pulls, image) = (Arc::downgrade(self), image.to_owned());
        tokio::spawn(async move {
            let _lane = lane.lock().await;
            let begun = Instant::now();
            update(&pulls, &image, |entry| {
                entry.running = entry.next.take().map(|next| (begun, next));
            });
            let result = pull.await.map_err(Arc::new);
            update(&pulls, &image, |entry| {
                entry.running = None;
                if let Ok(id) = &result {
                    entry.last = Some((begun, id.clone()));
                }
            });
            if let Some(pulls) = pulls.upgrade() {
                pulls.forget_old();
            }
            result
        })
        .map(|joined| {
            joined.unwrap_or_else(|e| Err(Arc::new(Error::Task(format!("pulling an image: {e}")))))
        })
        .boxed()
        .shared()
    }

    /// Forgets the images with no pull waiting or under way whose last pull is too old to serve.
    fn forget_old(&self) {
        let mut images = self.images.lock().unwrap_or_else(|e| e.into_inner());
        images.retain(|_, entry| {
            entry.next.is_some()
                || entry.running.is_some()
                || entry
                    .last
                    .as_ref()
                    .is_some_and(|(begun, _)| begun.elapsed() < KEEP_LAST)
        });
    }

    /// How many images the map holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.images.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Changes what is kept of `image`'s pulls, if the map and the image are still there.
fn update(pulls: &Weak<Pulls>, image: &str, change: impl FnOnce(&mut Image)) {
    let Some(pulls) = pulls.upgrade() else {
        return;
    };
    let mut images = pulls.images.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(entry) = images.get_mut(image) {
        change(entry);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Semaphore;

    use super::*;

    /// A stand-in for the engine's pull: counts the pulls begun, and waits for `gate` before
    /// each ends; returns the pull's number, or fails when `fail` says so.
    #[derive(Clone)]
    struct Registry {
        begun: Arc<AtomicUsize>,
        gate: Arc<Semaphore>,
    }

    impl Default for Registry {
        fn default() -> Self {
            Self {
                begun: Arc::default(),
                gate: Arc::new(Semaphore::new(0)),
            }
        }
    }

    impl Registry {
        fn pull(&self, fail: bool) -> impl Future<Output = Result<String>> + Send + 'static {
            let registry = self.clone();
            async move {
                let number = registry.begun.fetch_add(1, Ordering::SeqCst) + 1;
                registry
                    .gate
                    .acquire()
                    .await
                    .expect("the gate stays open")
                    .forget();
                if fail {
                    return Err(Error::Pull {
                        image: "app:1".into(),
                        message: "manifest unknown".into(),
                    });
                }
                Ok(format!("pull {number}"))
            }
        }

        fn begun(&self) -> usize {
            self.begun.load(Ordering::SeqCst)
        }

        /// Waits until `count` pulls have begun; fails after a few seconds.
        async fn until_begun(&self, count: usize) {
            let waiting = async {
                while self.begun() < count {
                    tokio::task::yield_now().await;
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
                .await
                .unwrap_or_else(|_| panic!("{} of {count} pulls began", self.begun()));
        }
    }

    /// Asks for `image` pulled no earlier than `after`, in a task of its own.
    fn ask(
        pulls: &Arc<Pulls>,
        registry: &Registry,
        image: &'static str,
        after: Instant,
        fail: bool,
    ) -> tokio::task::JoinHandle<Result<String>> {
        let (pulls, pull) = (pulls.clone(), registry.pull(fail));
        tokio::spawn(async move { pulls.pull(image, after, pull).await })
    }

    /// Lets the other tasks run.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn askers_while_a_pull_is_under_way_share_the_next_one() {
        let (pulls, registry) = (Arc::new(Pulls::default()), Registry::default());
        let first = ask(&pulls, &registry, "app:1", Instant::now(), false);
        registry.until_begun(1).await;
        let later: Vec<_> = (0..5)
            .map(|_| ask(&pulls, &registry, "app:1", Instant::now(), false))
            .collect();
        settle().await;
        assert_eq!(
            registry.begun(),
            1,
            "the next pull waits for the one under way"
        );
        registry.gate.add_permits(2);
        assert_eq!(first.await.unwrap().unwrap(), "pull 1");
        for asker in later {
            assert_eq!(
                asker.await.unwrap().unwrap(),
                "pull 2",
                "every later asker gets a pull that began after it asked"
            );
        }
        assert_eq!(registry.begun(), 2);
    }

    #[tokio::test]
    async fn a_pull_serves_everyone_who_asked_before_it_began() {
        let (pulls, registry) = (Arc::new(Pulls::default()), Registry::default());
        let asked = Instant::now();
        let first = ask(&pulls, &registry, "app:1", asked, false);
        registry.until_begun(1).await;
        let joined: Vec<_> = (0..5)
            .map(|_| ask(&pulls, &registry, "app:1", asked, false))
            .collect();
        settle().await;
        registry.gate.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap(), "pull 1");
        for asker in joined {
            assert_eq!(asker.await.unwrap().unwrap(), "pull 1");
        }
        let served = pulls.pull("app:1", asked, registry.pull(false)).await;
        assert_eq!(
            served.unwrap(),
            "pull 1",
            "the last pull serves without another"
        );
        assert_eq!(registry.begun(), 1);
        registry.gate.add_permits(1);
        let fresh = pulls
            .pull("app:1", Instant::now(), registry.pull(false))
            .await;
        assert_eq!(fresh.unwrap(), "pull 2", "a later request pulls again");
    }

    #[tokio::test]
    async fn different_images_are_pulled_at_once() {
        let (pulls, registry) = (Arc::new(Pulls::default()), Registry::default());
        let askers: Vec<_> = ["app:1", "db:1"]
            .into_iter()
            .map(|image| ask(&pulls, &registry, image, Instant::now(), false))
            .collect();
        registry.until_begun(2).await;
        registry.gate.add_permits(2);
        for asker in askers {
            asker.await.unwrap().unwrap();
        }
        assert_eq!(pulls.len(), 2, "each image's last pull is kept");
    }

    #[tokio::test]
    async fn a_failed_pull_fails_everyone_who_joined_it_and_is_not_kept() {
        let (pulls, registry) = (Arc::new(Pulls::default()), Registry::default());
        let first = ask(&pulls, &registry, "app:1", Instant::now(), false);
        registry.until_begun(1).await;
        let asked = Instant::now();
        let joined: Vec<_> = (0..2)
            .map(|_| ask(&pulls, &registry, "app:1", asked, true))
            .collect();
        settle().await;
        registry.gate.add_permits(2);
        first.await.unwrap().unwrap();
        for asker in joined {
            let error = asker.await.unwrap().unwrap_err().to_string();
            assert_eq!(error, "pulling image 'app:1' failed: manifest unknown");
        }
        registry.gate.add_permits(1);
        let again = pulls.pull("app:1", asked, registry.pull(false)).await;
        assert_eq!(again.unwrap(), "pull 3", "a failure is not remembered");
    }

    #[tokio::test]
    async fn a_pull_runs_to_its_end_when_nobody_waits_for_it() {
        let (pulls, registry) = (Arc::new(Pulls::default()), Registry::default());
        let first = ask(&pulls, &registry, "app:1", Instant::now(), false);
        registry.until_begun(1).await;
        let cancelled = ask(&pulls, &registry, "app:1", Instant::now(), false);
        settle().await;
        cancelled.abort();
        let _ = cancelled.await;
        registry.gate.add_permits(2);
        first.await.unwrap().unwrap();
        registry.until_begun(2).await;
        registry.gate.add_permits(1);
        let later = pulls
            .pull("app:1", Instant::now(), registry.pull(false))
            .await;
        assert_eq!(later.unwrap(), "pull 3", "the image's lane was let go");
    }
}
