//! How long the linearizability checker takes on contended histories from 8 clients.

use auction_lab::checker::{check, contended_history};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn checker(c: &mut Criterion) {
    let mut group = c.benchmark_group("checker");
    group.sample_size(10);
    for rounds in [125u64, 500] {
        let history = contended_history(rounds);
        group.bench_with_input(BenchmarkId::new("ops", history.len()), &history, |b, h| {
            b.iter(|| check(h).expect("linearizable"))
        });
    }
    group.finish();
}

criterion_group!(benches, checker);
criterion_main!(benches);
