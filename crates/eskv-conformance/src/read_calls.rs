//! How many backend calls the read paths make (on etcd and TiKV each is a
//! round trip): the head, the stream's state and the lifecycle check ride
//! along with the first index read instead of costing calls of their own,
//! and the live filter's answers stay right once lifecycle records exist.

use crate::counting::{CallCounts, CountingStore};
use eskv_core::{
    EventStore, ExpectedVersion, KvStore, NewEvent, Query, ReadOptions, ReadStreamOptions,
    Retention,
};
use std::sync::Arc;

type Store = Arc<dyn KvStore>;

/// Backend read calls (each a round trip on a remote backend).
fn reads(c: CallCounts) -> u64 {
    c.gets + c.get_manys + c.scans + c.read_manys
}

fn since(probe: &CountingStore, before: CallCounts) -> (u64, CallCounts) {
    let now = probe.counts();
    (reads(now) - reads(before), now)
}

/// A one-page stream read is two backend calls (head, stream state,
/// lifecycle record and index page; then the events), a tag query two
/// (head, lifecycle probe and index page; then the events), a log read
/// two (head and lifecycle probe; then the page). After a retention is
/// set, the same reads drop exactly the released events.
pub async fn reads_make_few_backend_calls(store: Store) {
    let probe = CountingStore::new(store);
    let es = EventStore::open(Arc::new(probe.clone()))
        .await
        .expect("open event store");
    for i in 0..5u8 {
        es.append_to_stream(
            "order-1",
            ExpectedVersion::Any,
            vec![NewEvent::new("Placed", vec![i]).with_tags(["shop:a"])],
        )
        .await
        .expect("append to order-1");
        es.append_to_stream(
            "order-2",
            ExpectedVersion::Any,
            vec![NewEvent::new("Placed", vec![i]).with_tags(["shop:b"])],
        )
        .await
        .expect("append to order-2");
    }

    let before = probe.counts();
    let read = es
        .read_stream("order-1", ReadStreamOptions::new())
        .await
        .expect("read_stream");
    let (calls, before) = since(&probe, before);
    assert_eq!((read.len(), read.version), (5, 5));
    assert_eq!(
        calls, 2,
        "read_stream of one page: one call for head, stream state, lifecycle record and index page, one for the events"
    );

    let tag = Query::of([], ["shop:b"]);
    let r = es.read(&tag, ReadOptions::new()).await.expect("read tag");
    let (calls, before) = since(&probe, before);
    assert_eq!(r.events.len(), 5);
    assert_eq!(
        calls, 2,
        "a forward tag query: one call for head, lifecycle probe and index page, one for the events"
    );

    let all = es.read_all(ReadOptions::new()).await.expect("read_all");
    let (calls, _) = since(&probe, before);
    assert_eq!(all.events.len(), 10);
    assert_eq!(
        calls, 2,
        "a one-page log read: one call for head and lifecycle probe, one for the page"
    );

    // Lifecycle records exist now: the filter looks streams up again.
    es.set_retention(
        "order-1",
        Retention::new().truncate_before(4),
        ExpectedVersion::NoStream,
    )
    .await
    .expect("set retention");
    let read = es
        .read_stream("order-1", ReadStreamOptions::new())
        .await
        .expect("read_stream after retention");
    let versions: Vec<u64> = read
        .events
        .iter()
        .filter_map(|e| e.stream.as_ref().map(|s| s.version))
        .collect();
    assert_eq!(
        versions,
        vec![4, 5],
        "released versions 1..=3 must not be read"
    );
    let shop_a = Query::of([], ["shop:a"]);
    let r = es.read(&shop_a, ReadOptions::new()).await.expect("read");
    assert_eq!(r.events.len(), 2, "a tag query skips released events");
    let all = es.read_all(ReadOptions::new()).await.expect("read_all");
    let order1 = all
        .events
        .iter()
        .filter(|e| e.stream.as_ref().is_some_and(|s| s.stream_id == "order-1"))
        .count();
    // order-2's five, order-1's two live ones and the retention event.
    assert_eq!((order1, all.events.len()), (2, 8));
}

/// Defines one `#[tokio::test]` per case of this module (how many backend
/// calls a read takes), on stores from `$factory` (see
/// [`all_suites!`](crate::all_suites)). The case counts the backend's own
/// calls, so it is `#[direct_only]`.
#[macro_export]
macro_rules! read_call_tests {
    ($factory:path) => {
        $crate::read_call_tests!(direct, $factory);
    };
    ($mode:ident, $factory:path) => {
        $crate::__cases!(
            $mode,
            $factory,
            $crate::read_calls,
            [
                #[direct_only]
                reads_make_few_backend_calls
            ]
        );
    };
}
