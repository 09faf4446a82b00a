//! openraft's async runtime: tokio's, with openraft's one source of randomness (the election
//! timeouts and tick jitter it draws through `thread_rng`) behind a seam. In production each
//! draw is seeded from the operating system; a simulation seeds the thread it runs on
//! (`seed_thread_rng`), so one seed names one run, random draws included. For the same reason
//! every `tokio::select!` in this crate is `biased`: an unbiased one draws its branch order from
//! tokio's own RNG, which only an unstable tokio build lets a simulation seed.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::time::Duration;

use openraft::rt::{AsyncRuntime, OptionalSend, Select2, Select3, Select4};
use openraft_rt_tokio::TokioRuntime;
use rand::rngs::SmallRng;
use rand::SeedableRng;

thread_local! {
    /// The next seed `thread_rng` hands out on this thread, if a simulation set one.
    static SEED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// From now on, `thread_rng` on this thread draws from a sequence that `seed` fixes (None: from
/// the operating system again).
pub fn seed_thread_rng(seed: Option<u64>) {
    SEED.with(|s| s.set(seed));
}

thread_local! {
    /// Whether `blocking` runs its work in place on this thread (a simulation).
    static INLINE_BLOCKING: Cell<bool> = const { Cell::new(false) };
}

/// From now on, `blocking` on this thread runs its work in place rather than on tokio's
/// blocking pool. A simulation sets it: work on another thread finishes after a real delay,
/// which would make a seed's schedule depend on how fast the machine is.
pub fn run_blocking_inline(inline: bool) {
    INLINE_BLOCKING.with(|i| i.set(inline));
}

/// Runs file work (opening a log, removing a replica's directory) off the async workers.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    if INLINE_BLOCKING.with(|i| i.get()) {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f).await.map_err(|e| e.to_string())
}

/// A random number for this crate's own uses (a process incarnation), from the same seam as
/// openraft's draws.
pub fn random_u64() -> u64 {
    use rand::RngExt;
    FjordRuntime::thread_rng().random()
}

/// Tokio's runtime for openraft, with a seedable `thread_rng`.
pub struct FjordRuntime(TokioRuntime);

impl std::fmt::Debug for FjordRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjordRuntime").finish()
    }
}

impl AsyncRuntime for FjordRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn select2<A, B>(a: A, b: B) -> impl Future<Output = Select2<A::Output, B::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
    {
        TokioRuntime::select2(a, b)
    }

    fn select3<A, B, C>(
        a: A,
        b: B,
        c: C,
    ) -> impl Future<Output = Select3<A::Output, B::Output, C::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
    {
        TokioRuntime::select3(a, b, c)
    }

    fn select4<A, B, C, D>(
        a: A,
        b: B,
        c: C,
        d: D,
    ) -> impl Future<Output = Select4<A::Output, B::Output, C::Output, D::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
        D: Future + OptionalSend,
    {
        TokioRuntime::select4(a, b, c, d)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        let seeded = SEED.with(|s| {
            let seed = s.get()?;
            s.set(Some(fjord_storage::disk::sim::Rng(seed).next()));
            Some(seed)
        });
        match seeded {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => rand::make_rng(),
        }
    }

    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        FjordRuntime(TokioRuntime::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        TokioRuntime::spawn_blocking(f)
    }
}

#[cfg(test)]
mod tests {
    use rand::RngExt;

    use super::*;

    #[test]
    fn a_seeded_thread_draws_the_same_sequence_again() {
        let draw = || (0..4).map(|_| FjordRuntime::thread_rng().random_range(0..1_000_000u64)).collect::<Vec<_>>();
        seed_thread_rng(Some(42));
        let first = draw();
        seed_thread_rng(Some(42));
        assert_eq!(draw(), first, "one seed, one sequence");
        seed_thread_rng(Some(43));
        assert_ne!(draw(), first, "another seed, another sequence");
        seed_thread_rng(None);
        assert_ne!(draw(), draw(), "unseeded draws come from the operating system");
    }
}
