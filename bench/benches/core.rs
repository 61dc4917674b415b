//! The hot path without the network: the state machine deciding bids, and the replication codec
//! encoding and decoding a batch of changes.

use auction::auction::{Machine, Op};
use auction::pb;
use auction::replication::{Change, ChangeKind};
use auction::types::{Amount, AuctionLength, BidderId, Credential, Millis, RequestId};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;

fn open_machine() -> Machine {
    let mut m = Machine::default();
    let start = Op::Start {
        duration: AuctionLength::from_secs(3600).expect("valid"),
    };
    m.apply(Millis(0), None, &start).expect("opens");
    m
}

fn bids(n: u64, sessions: u64) -> Vec<(RequestId, Op)> {
    let names: Vec<BidderId> = (0..64)
        .map(|i| BidderId::new(format!("bidder{i}")).expect("valid"))
        .collect();
    (1..=n)
        .map(|i| {
            let session = 1 + i % sessions;
            let id = RequestId::new(session, 1 + i / sessions).expect("non-zero");
            let op = Op::Bid {
                bidder: names[(i % 64) as usize].clone(),
                amount: Amount::new(i).expect("positive"),
                credential: Credential([(i % 64) as u8; 32]),
            };
            (id, op)
        })
        .collect()
}

fn state_machine(c: &mut Criterion) {
    let mut group = c.benchmark_group("state_machine");
    for sessions in [64u64, 10_000] {
        let input = bids(10_000, sessions);
        group.throughput(Throughput::Elements(input.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("apply_bids", format!("{sessions}_sessions")),
            &input,
            |b, input| {
                b.iter_batched(
                    open_machine,
                    |mut m| {
                        for (i, (id, op)) in input.iter().enumerate() {
                            let _ = m.apply(Millis(i as u64), Some(*id), op);
                        }
                        m
                    },
                    BatchSize::LargeInput,
                )
            },
        );
    }
    group.finish();
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for batch in [1usize, 64] {
        let changes: Vec<Change> = bids(batch as u64, 64)
            .into_iter()
            .map(|(id, op)| Change {
                at: Millis(86_400_000),
                kind: ChangeKind::Client { id: Some(id), op },
            })
            .collect();
        let append = pb::Append {
            first_version: 1,
            changes: changes.iter().map(Into::into).collect(),
            generation: 1,
            epoch: 1,
        };
        let bytes = append.encode_to_vec();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("encode", batch), &changes, |b, changes| {
            b.iter(|| {
                pb::Append {
                    first_version: 1,
                    changes: changes.iter().map(Into::into).collect(),
                    generation: 1,
                    epoch: 1,
                }
                .encode_to_vec()
            })
        });
        group.bench_with_input(BenchmarkId::new("decode", batch), &bytes, |b, bytes| {
            b.iter(|| {
                let append = pb::Append::decode(bytes.as_slice()).expect("valid");
                append
                    .changes
                    .into_iter()
                    .map(Change::try_from)
                    .collect::<Result<Vec<_>, _>>()
                    .expect("valid")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, state_machine, codec);
criterion_main!(benches);
