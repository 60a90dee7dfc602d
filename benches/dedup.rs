//! The actor's idempotency claims against a real local Redis (`REFLEX_TEST_REDIS_URL`, else
//! redis://127.0.0.1:6379; skipped with a message when unreachable). Each iteration claims 1000
//! fresh keys with the actor's own claim script (`SET NX PX` with a lease):
//! - `claim_batch_1000`: `Store::claim_batch`, one pipeline (one round trip) per 1000 claims;
//! - `claim_concurrent_256`: single `Store::claim` calls, 256 in flight on the one multiplexed
//!   connection (how the actor's key lanes use it);
//! - `claim_awaited_one_by_one`: one awaited call per claim (the pattern to avoid; reference);
//! - `claim_and_done_batches_of_64`: the actor's whole Redis cost per request since batching:
//!   per lane batch (`runtime.batch_max` = 64) one `claim_batch` and one `done_batch` (a
//!   ~200-byte outcome each), batches one after another.
//!
//! Run: `cargo bench --bench dedup`. Target (issue 7): ≥ 100k claims/s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::stream::{self, StreamExt};
use reflex_actor::store::{Claim, Store};

const BATCH: u64 = 1000;
const LEASE: Duration = Duration::from_secs(60);

fn keys(counter: &AtomicU64) -> Vec<String> {
    let start = counter.fetch_add(BATCH, Ordering::Relaxed);
    (start..start + BATCH).map(|i| format!("evt-{i}")).collect()
}

fn benches(c: &mut Criterion) {
    let url = std::env::var("REFLEX_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let prefix = format!("bench-dedup-{}", std::process::id());
    let store = match rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(3), Store::connect(&url, &prefix, None)).await
    }) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            eprintln!("dedup bench skipped: Redis at {url} is unreachable ({e}); set REFLEX_TEST_REDIS_URL or start redis-server");
            return;
        }
        Err(_) => {
            eprintln!("dedup bench skipped: Redis at {url} did not answer within 3 s; set REFLEX_TEST_REDIS_URL or start redis-server");
            return;
        }
    };
    let counter = AtomicU64::new(0);
    let owner = reflex_actor::store::owner_token("bench");
    // Sanity: fresh keys are claimed, a second claim sees our hold.
    let k = keys(&counter);
    let claims: Vec<(&str, &str)> = k.iter().map(|k| (k.as_str(), owner.as_str())).collect();
    let first = rt.block_on(store.claim_batch(&claims, LEASE)).unwrap();
    assert!(first.iter().all(|c| *c == Claim::Claimed));
    let again = rt.block_on(store.claim(&k[0], "other", LEASE)).unwrap();
    assert_eq!(again, Claim::Busy(owner.clone()));

    let mut g = c.benchmark_group("dedup");
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(20);
    g.bench_function("claim_batch_1000", |b| {
        b.iter_custom(|iters| {
            let batches: Vec<Vec<String>> = (0..iters).map(|_| keys(&counter)).collect();
            rt.block_on(async {
                let start = Instant::now();
                for k in &batches {
                    let claims: Vec<(&str, &str)> =
                        k.iter().map(|k| (k.as_str(), owner.as_str())).collect();
                    let got = store.claim_batch(&claims, LEASE).await.unwrap();
                    debug_assert_eq!(got.len(), claims.len());
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("claim_concurrent_256", |b| {
        b.iter_custom(|iters| {
            let batches: Vec<Vec<String>> = (0..iters).map(|_| keys(&counter)).collect();
            rt.block_on(async {
                let start = Instant::now();
                for k in &batches {
                    stream::iter(k)
                        .map(|k| store.claim(k, &owner, LEASE))
                        .buffer_unordered(256)
                        .for_each(|r| {
                            r.unwrap();
                            async {}
                        })
                        .await;
                }
                start.elapsed()
            })
        })
    });
    let outcome = format!(
        r#"{{"result":"SUCCEEDED","worker":"bench","attempt":1,"pad":"{}"}}"#,
        "x".repeat(140)
    );
    g.bench_function("claim_and_done_batches_of_64", |b| {
        b.iter_custom(|iters| {
            let batches: Vec<Vec<String>> = (0..iters).map(|_| keys(&counter)).collect();
            rt.block_on(async {
                let start = Instant::now();
                for k in &batches {
                    for chunk in k.chunks(64) {
                        let claims: Vec<(&str, &str)> =
                            chunk.iter().map(|k| (k.as_str(), owner.as_str())).collect();
                        store.claim_batch(&claims, LEASE).await.unwrap();
                        let done: Vec<(&str, &str, &str)> = chunk
                            .iter()
                            .map(|k| (k.as_str(), owner.as_str(), outcome.as_str()))
                            .collect();
                        store.done_batch(&done, LEASE).await.unwrap();
                    }
                }
                start.elapsed()
            })
        })
    });
    g.sample_size(10);
    g.bench_function("claim_awaited_one_by_one", |b| {
        b.iter_custom(|iters| {
            let batches: Vec<Vec<String>> = (0..iters).map(|_| keys(&counter)).collect();
            rt.block_on(async {
                let start = Instant::now();
                for k in &batches {
                    for key in k {
                        store.claim(key, &owner, LEASE).await.unwrap();
                    }
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(dedup_benches, benches);
criterion_main!(dedup_benches);
