//! Micro-benchmarks of the storage hot paths: validating a produced batch
//! (header walk and CRC-32C), appending to the log, and reading from it.
//! `cargo bench -p fjord-storage`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fjord_storage::batch::{build_batch, split_and_validate, KeyValue};
use fjord_storage::{LogConfig, PartitionLog};

/// A batch of `n` records of `size` bytes, like a producer's.
fn batch(n: usize, size: usize) -> Vec<u8> {
    let value = vec![7u8; size];
    let recs: Vec<KeyValue<'_>> = (0..n).map(|_| (None, Some(&value[..]))).collect();
    build_batch(0, 1_700_000_000_000, &recs)
}

fn validation(c: &mut Criterion) {
    let b = batch(16, 1024);
    let mut g = c.benchmark_group("validate");
    g.throughput(Throughput::Bytes(b.len() as u64));
    g.bench_function("16x1KiB batch", |bench| bench.iter(|| split_and_validate(&b, 1 << 20).map(|v| v.len())));
    g.finish();
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = PartitionLog::open(dir.path(), LogConfig::default()).expect("open log");
    let template = batch(16, 1024);
    let mut g = c.benchmark_group("append");
    g.throughput(Throughput::Bytes(template.len() as u64));
    g.bench_function("16x1KiB batch", |bench| {
        bench.iter_batched_ref(
            || template.clone(),
            |b| log.append(b, 0, 1_700_000_000_000).map(|i| i.last_offset),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn read(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = PartitionLog::open(dir.path(), LogConfig::default()).expect("open log");
    for _ in 0..4096 {
        log.append(&batch(16, 1024), 0, 1_700_000_000_000).expect("append");
    }
    let end = log.log_end_offset();
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Bytes(1 << 20));
    let mut next = 0i64;
    g.bench_function("1 MiB from a mapped segment", |bench| {
        bench.iter(|| {
            let r = log.read(next, 1 << 20, end).expect("read");
            next = (next + 1024) % (end - 1024);
            r.records.len()
        })
    });
    g.finish();
}

criterion_group!(benches, validation, append, read);
criterion_main!(benches);
