//! A blocking event store for programs without async: each call blocks the
//! calling thread until the operation is done.
//!
//! [`EventStore`] owns a small **multi-thread tokio runtime with one worker
//! thread**. One worker, because the store's own work is small (group
//! commits, backend I/O, which redb does on its own threads); a
//! multi-thread runtime rather than a current-thread one, because its
//! worker runs the store's background tasks (the group-commit batches)
//! whether or not a caller is inside a call, so several threads can share
//! one blocking store (it is `Clone`, `Send` and `Sync`) and their appends
//! still combine into group commits.
//!
//! Do not call it from async code: blocking inside a tokio runtime panics.
//! There, use [`crate::EventStore`].
//!
//! ```
//! use eskv::blocking::EventStore;
//! use eskv::{ExpectedVersion, NewEvent, ReadStreamOptions};
//!
//! let store = EventStore::memory()?;
//! store.append_to_stream("order-1", ExpectedVersion::NoStream, vec![NewEvent::new("OrderPlaced", b"{}".to_vec())])?;
//! assert_eq!(store.read_stream("order-1", ReadStreamOptions::new())?.len(), 1);
//! # Ok::<(), eskv::Error>(())
//! ```

use crate::{OpenOptions, StoreUrl};
use eskv_core::{
    AppendCondition, AppendResult, DecideError, DecideOptions, Decided, Decision, DomainEvent,
    Error, EventStoreOptions, ExpectedVersion, KvStore, MemoryStore, NewEvent, Query, ReadOptions,
    ReadResult, ReadStreamOptions, Result, StreamRead,
};
use std::future::Future;
use std::sync::Arc;

/// Opens the event store behind a store URL (`fjall:PATH`, `redb:PATH`,
/// `memory:`, `etcd://...`, `tikv://...`), as [`crate::open`] does, for a
/// program without async.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let url = format!("redb:{}", dir.path().join("events.redb").display());
/// let store = eskv::blocking::open(&url)?;
/// assert_eq!(store.head()?, 0);
///
/// let err = eskv::blocking::open("events.redb").unwrap_err();
/// assert!(matches!(err, eskv::Error::InvalidInput { .. }), "{err}");
/// # Ok::<(), eskv::Error>(())
/// ```
pub fn open(url: &str) -> Result<EventStore> {
    open_url(&crate::open::parse_store_url(url)?, &OpenOptions::default())
}

/// Opens the event store behind `url` with `options` (read-only, lock
/// wait, and the event store's own options: upcasters, limits, store
/// key), as [`crate::open_url`] does, for a program without async.
///
/// ```
/// use eskv::{EventStoreOptions, OpenOptions, StoreUrl};
/// let options = OpenOptions::default().store(EventStoreOptions::default());
/// let store = eskv::blocking::open_url(&StoreUrl::Memory, &options)?;
/// assert_eq!(store.head()?, 0);
/// # Ok::<(), eskv::Error>(())
/// ```
pub fn open_url(url: &StoreUrl, options: &OpenOptions) -> Result<EventStore> {
    EventStore::on_runtime(|| crate::open::open_url(url, options))
}

/// A blocking handle on an event store; see the [module docs](self).
/// Clones share one store and one runtime, so appends from several
/// threads combine into group commits:
///
/// ```
/// use eskv::{blocking::EventStore, NewEvent};
/// let store = EventStore::memory()?;
/// let writers: Vec<_> = (0..4)
///     .map(|i| {
///         let store = store.clone();
///         std::thread::spawn(move || store.append(vec![NewEvent::new("Tick", vec![i])], None))
///     })
///     .collect();
/// for w in writers {
///     w.join().unwrap()?;
/// }
/// assert_eq!(store.head()?, 4);
/// # Ok::<(), eskv::Error>(())
/// ```
#[derive(Clone)]
pub struct EventStore {
    rt: Arc<tokio::runtime::Runtime>,
    inner: eskv_core::EventStore,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("blocking::EventStore")
            .field("inner", &self.inner)
            .finish()
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("eskv-blocking")
        .enable_all()
        .build()
        .map_err(|e| Error::backend("eskv blocking runtime", e))
}

impl EventStore {
    /// Opens an event store on `kv` (built on this store's runtime by
    /// `make_kv`, since backends may start tasks when they open).
    ///
    /// ```
    /// let store = eskv::blocking::EventStore::open(|| async {
    ///     Ok(std::sync::Arc::new(eskv::MemoryStore::new()) as std::sync::Arc<dyn eskv::KvStore>)
    /// })?;
    /// # Ok::<(), eskv::Error>(())
    /// ```
    pub fn open<F, Fut>(make_kv: F) -> Result<Self>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<dyn KvStore>>>,
    {
        Self::open_with(make_kv, EventStoreOptions::default())
    }

    /// [`open`](Self::open) with options: upcasters, limits, a store key
    /// for personal data, and the rest of [`EventStoreOptions`].
    ///
    /// ```
    /// use eskv::{EventStoreOptions, KvStore, MemoryStore, NewEvent, ReadOptions};
    /// use std::sync::Arc;
    /// let options = EventStoreOptions::default()
    ///     .upcast_json("Deposited", 1, |mut v| { v["currency"] = "EUR".into(); Ok(v) });
    /// let store = eskv::blocking::EventStore::open_with(
    ///     || async { Ok(Arc::new(MemoryStore::new()) as Arc<dyn KvStore>) },
    ///     options,
    /// )?;
    /// store.append(vec![NewEvent::json("Deposited", &serde_json::json!({"cents": 5}))?], None)?;
    /// assert_eq!(store.read_all(ReadOptions::new())?.events[0].schema_version(), 2);
    /// # Ok::<(), eskv::Error>(())
    /// ```
    pub fn open_with<F, Fut>(make_kv: F, options: EventStoreOptions) -> Result<Self>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<dyn KvStore>>>,
    {
        Self::on_runtime(|| async {
            eskv_core::EventStore::open_with(make_kv().await?, options).await
        })
    }

    /// A blocking store on a new runtime, around the async store `open`
    /// opens on it (backends may start tasks when they open).
    fn on_runtime<F, Fut>(open: F) -> Result<Self>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<eskv_core::EventStore>>,
    {
        let rt = runtime()?;
        let inner = rt.block_on(open())?;
        Ok(EventStore {
            rt: Arc::new(rt),
            inner,
        })
    }

    /// An event store in memory (tests, examples).
    ///
    /// ```
    /// let store = eskv::blocking::EventStore::memory()?;
    /// assert_eq!(store.head()?, 0);
    /// # Ok::<(), eskv::Error>(())
    /// ```
    pub fn memory() -> Result<Self> {
        Self::open(|| async { Ok(Arc::new(MemoryStore::new()) as Arc<dyn KvStore>) })
    }

    /// Opens (or creates) an event store on the redb file at `path`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = eskv::blocking::EventStore::open_redb(dir.path().join("events.redb"))?;
    /// assert_eq!(store.head()?, 0);
    /// # Ok::<(), eskv::Error>(())
    /// ```
    #[cfg(feature = "redb")]
    pub fn open_redb(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        Self::open(|| async move {
            Ok(Arc::new(eskv_redb::RedbStore::open(path).await?) as Arc<dyn KvStore>)
        })
    }

    /// The async store underneath, for what this facade does not cover
    /// (subscriptions, projections). Run its futures with
    /// [`block_on`](Self::block_on).
    ///
    /// ```
    /// use eskv::{ExpectedVersion, NewEvent};
    /// let store = eskv::blocking::EventStore::memory()?;
    /// store.append_to_stream("order-1", ExpectedVersion::NoStream, vec![NewEvent::new("Placed", vec![])])?;
    /// let info = store.block_on(store.as_async().stream_info("order-1"))?;
    /// assert_eq!(info.version, 1);
    /// # Ok::<(), eskv::Error>(())
    /// ```
    pub fn as_async(&self) -> &eskv_core::EventStore {
        &self.inner
    }

    /// Runs a future on this store's runtime and waits for it.
    ///
    /// ```
    /// let store = eskv::blocking::EventStore::memory()?;
    /// let types = store.block_on(store.as_async().event_types())?;
    /// assert!(types.is_empty());
    /// # Ok::<(), eskv::Error>(())
    /// ```
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The last position (0 when empty). See [`eskv_core::EventStore::head`].
    ///
    /// ```
    /// let store = eskv::blocking::EventStore::memory()?;
    /// store.append(vec![eskv::NewEvent::new("Tick", vec![])], None)?;
    /// assert_eq!(store.head()?, 1);
    /// # Ok::<(), eskv::Error>(())
    /// ```
    pub fn head(&self) -> Result<u64> {
        self.block_on(self.inner.head())
    }

    /// Appends under an optional DCB condition. See
    /// [`eskv_core::EventStore::append`].
    ///
    /// ```
    /// use eskv::{AppendCondition, Error, NewEvent, Query};
    /// let store = eskv::blocking::EventStore::memory()?;
    /// let email = Query::tags(["email:a@x"]);
    /// let register = || NewEvent::new("Registered", vec![]).with_tags(["email:a@x"]);
    /// // Unique email: fails if any event with the tag exists.
    /// store.append(vec![register()], Some(AppendCondition::new(email.clone(), None)))?;
    /// let again = store.append(vec![register()], Some(AppendCondition::new(email, None)));
    /// assert!(matches!(again, Err(Error::ConditionFailed { .. })));
    /// # Ok::<(), eskv::Error>(())
    /// ```
    pub fn append(
        &self,
        events: Vec<NewEvent>,
        condition: Option<AppendCondition>,
    ) -> Result<AppendResult> {
        self.block_on(self.inner.append(events, condition))
    }

    /// Appends to a stream if its version matches. See
    /// [`eskv_core::EventStore::append_to_stream`].
    ///
    /// ```
    /// use eskv::{Error, ExpectedVersion, NewEvent};
    /// let store = eskv::blocking::EventStore::memory()?;
    /// let placed = || vec![NewEvent::new("Placed", vec![])];
    /// assert_eq!(store.append_to_stream("order-1", ExpectedVersion::NoStream, placed())?.stream_version, Some(1));
    /// let stale = store.append_to_stream("order-1", ExpectedVersion::NoStream, placed());
    /// assert!(matches!(stale, Err(Error::WrongExpectedVersion { .. })));
    /// # Ok::<(), eskv::Error>(())
    /// ```
    pub fn append_to_stream(
        &self,
        stream: impl AsRef<str>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let stream = stream.as_ref();
        self.block_on(self.inner.append_to_stream(stream, expected, events))
    }

    /// DCB read. See [`eskv_core::EventStore::read`].
    ///
    /// ```
    /// use eskv::{NewEvent, Query, ReadOptions};
    /// let store = eskv::blocking::EventStore::memory()?;
    /// store.append(vec![
    ///     NewEvent::new("Subscribed", vec![]).with_tags(["course:c1"]),
    ///     NewEvent::new("Subscribed", vec![]).with_tags(["course:c2"]),
    /// ], None)?;
    /// let c1 = store.read(&Query::tags(["course:c1"]), ReadOptions::new())?;
    /// assert_eq!((c1.events.len(), c1.consistent_through), (1, 2));
    /// # Ok::<(), eskv::Error>(())
    /// ```
    pub fn read(&self, query: &Query, opts: ReadOptions) -> Result<ReadResult> {
        self.block_on(self.inner.read(query, opts))
    }

    /// Reads a stream. See [`eskv_core::EventStore::read_stream`].
    ///
    /// ```
    /// use eskv::{ExpectedVersion, NewEvent, ReadStreamOptions};
    /// let store = eskv::blocking::EventStore::memory()?;
    /// let steps = (0..3).map(|_| NewEvent::new("Step", vec![])).collect();
    /// store.append_to_stream("job-1", ExpectedVersion::NoStream, steps)?;
    /// let read = store.read_stream("job-1", ReadStreamOptions::new().from_version(2))?;
    /// assert_eq!((read.len(), read.version), (2, 3));
    /// # Ok::<(), eskv::Error>(())
    /// ```
    pub fn read_stream(
        &self,
        stream: impl AsRef<str>,
        opts: ReadStreamOptions,
    ) -> Result<StreamRead> {
        let stream = stream.as_ref();
        self.block_on(self.inner.read_stream(stream, opts))
    }

    /// Reads the global log. See [`eskv_core::EventStore::read_all`].
    ///
    /// ```
    /// use eskv::{NewEvent, ReadOptions};
    /// let store = eskv::blocking::EventStore::memory()?;
    /// store.append((0..5).map(|i| NewEvent::new("Tick", vec![i])).collect(), None)?;
    /// let last_two = store.read_all(ReadOptions::new().backwards().limit(2))?;
    /// assert_eq!(last_two.events.iter().map(|e| e.position).collect::<Vec<_>>(), [5, 4]);
    /// # Ok::<(), eskv::Error>(())
    /// ```
    pub fn read_all(&self, opts: ReadOptions) -> Result<ReadResult> {
        self.block_on(self.inner.read_all(opts))
    }

    /// A DCB decision (see [`eskv_core::Decider::decide`]).
    ///
    /// ```
    /// # use eskv::{DecodeError, DomainEvent, Json};
    /// # #[derive(Debug, PartialEq)]
    /// # enum Seat { Taken }
    /// # impl DomainEvent for Seat {
    /// #     const EVENT_TYPES: &'static [&'static str] = &["SeatTaken"];
    /// #     type Codec = Json;
    /// #     fn event_type(&self) -> &'static str { "SeatTaken" }
    /// #     fn tags(&self) -> Vec<String> { vec!["room:r1".into()] }
    /// #     fn encode_payload(&self) -> eskv::Result<Vec<u8>> { Ok(b"{}".to_vec()) }
    /// #     fn decode_payload(t: &str, _: &[u8]) -> Result<Self, DecodeError> {
    /// #         if t == "SeatTaken" { Ok(Seat::Taken) } else { Err(DecodeError::unknown_type::<Self>(t)) }
    /// #     }
    /// # }
    /// let store = eskv::blocking::EventStore::memory()?;
    /// let take = || store.decide(
    ///     eskv::Query::of(["SeatTaken"], ["room:r1"]),
    ///     |n: &mut u32, _: &Seat| *n += 1,
    ///     |n| if *n < 1 { Ok(vec![Seat::Taken]) } else { Err("full") },
    /// );
    /// assert!(take().is_ok());
    /// assert!(matches!(take(), Err(eskv::DecideError::Rejected("full"))));
    /// # Ok::<(), eskv::Error>(())
    /// ```
    pub fn decide<Ev, S, E>(
        &self,
        query: Query,
        fold: impl Fn(&mut S, &Ev),
        decide: impl FnMut(&S) -> std::result::Result<Vec<Ev>, E>,
    ) -> std::result::Result<Decided<Ev>, DecideError<E>>
    where
        Ev: DomainEvent,
        S: Default,
    {
        self.block_on(self.inner.decide(query, fold, decide))
    }

    /// A stream decision (see [`eskv_core::Decider::decide_stream`]).
    ///
    /// ```
    /// # #[derive(Debug, PartialEq, eskv::DomainEvent)]
    /// # enum Account { Deposited { n: u64 }, Withdrawn { n: u64 } }
    /// let store = eskv::blocking::EventStore::memory()?;
    /// let withdraw = |amount: u64| store.decide_stream(
    ///     "account-1",
    ///     |balance: &mut u64, e: &Account| match e {
    ///         Account::Deposited { n } => *balance += n,
    ///         Account::Withdrawn { n } => *balance -= n,
    ///     },
    ///     |&balance| if balance >= amount { Ok(vec![Account::Withdrawn { n: amount }]) } else { Err(balance) },
    /// );
    /// assert!(matches!(withdraw(1), Err(eskv::DecideError::Rejected(0))));
    /// # Ok::<(), eskv::Error>(())
    /// ```
    pub fn decide_stream<Ev, S, E>(
        &self,
        stream: impl AsRef<str>,
        fold: impl Fn(&mut S, &Ev),
        decide: impl FnMut(&S) -> std::result::Result<Vec<Ev>, E>,
    ) -> std::result::Result<Decided<Ev>, DecideError<E>>
    where
        Ev: DomainEvent,
        S: Default,
    {
        let stream = stream.as_ref();
        self.block_on(self.inner.decide_stream(stream, fold, decide))
    }

    /// Runs a [`Decision`] command with `opts` (see
    /// [`eskv_core::Decider::execute`]).
    ///
    /// ```
    /// use eskv::{Boundary, DecideOptions, Decision};
    /// # #[derive(Debug, PartialEq, eskv::DomainEvent)]
    /// # enum Ev { Registered { #[tag("email")] email: String } }
    /// struct Register(&'static str);
    /// impl Decision for Register {
    ///     type Event = Ev;
    ///     type State = bool;
    ///     type Error = &'static str;
    ///     fn boundary(&self) -> Boundary { eskv::Query::tags([format!("email:{}", self.0)]).into() }
    ///     fn evolve(&self, taken: &mut bool, _: &Ev) { *taken = true }
    ///     fn decide(&self, &taken: &bool) -> Result<Vec<Ev>, &'static str> {
    ///         if taken { Err("email taken") } else { Ok(vec![Ev::Registered { email: self.0.into() }]) }
    ///     }
    /// }
    /// let store = eskv::blocking::EventStore::memory()?;
    /// assert!(store.execute(&Register("a@x"), DecideOptions::new()).is_ok());
    /// assert!(store.execute(&Register("a@x"), DecideOptions::new()).is_err());
    /// # Ok::<(), eskv::Error>(())
    /// ```
    pub fn execute<D: Decision>(
        &self,
        command: &D,
        opts: DecideOptions,
    ) -> std::result::Result<Decided<D::Event>, DecideError<D::Error>> {
        self.block_on(self.inner.decider(opts).execute(command))
    }
}
