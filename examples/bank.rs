//! A bank account written the eskv way: typed events with
//! `#[derive(DomainEvent)]`, stream deciders that keep the balance from
//! going negative under concurrent withdrawals, a subscription consumed as
//! a `futures::Stream` that prints a statement line for every event, and an
//! event type at schema version 2 whose version-1 events (written by "last
//! year's program") are upcast on every read.
//!
//! ```sh
//! cargo run --example bank
//! ```

use eskv::{
    DecideError, DomainEvent, EventStore, EventStoreOptions, ExpectedVersion, MemoryStore,
    NewEvent, SubscriptionFilter, SubscriptionOptions,
};
use futures::StreamExt;
use std::fmt;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum BankEvent {
    #[eskv(type = "AccountOpened")]
    Opened {
        #[tag("owner")]
        owner: String,
    },
    /// Version 2 added the memo; version 1 events read as "no memo".
    #[eskv(type = "MoneyDeposited", version = 2)]
    Deposited { amount: u64, memo: String },
    #[eskv(type = "MoneyWithdrawn")]
    Withdrawn { amount: u64 },
}

#[derive(Debug, PartialEq)]
enum BankError {
    NoSuchAccount,
    AlreadyOpen,
    Insufficient { balance: u64, wanted: u64 },
}

impl fmt::Display for BankError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BankError::NoSuchAccount => f.write_str("no such account"),
            BankError::AlreadyOpen => f.write_str("the account is already open"),
            BankError::Insufficient { balance, wanted } => {
                write!(f, "insufficient funds: balance {balance}, wanted {wanted}")
            }
        }
    }
}

#[derive(Default)]
struct Account {
    open: bool,
    balance: u64,
}

fn evolve(a: &mut Account, e: &BankEvent) {
    match e {
        BankEvent::Opened { .. } => a.open = true,
        BankEvent::Deposited { amount, .. } => a.balance += amount,
        BankEvent::Withdrawn { amount } => a.balance -= amount,
    }
}

type Outcome = Result<(), DecideError<BankError>>;

async fn open(store: &EventStore, id: &str, owner: &str) -> Outcome {
    let opened = BankEvent::Opened {
        owner: owner.into(),
    };
    store
        .decide_stream(format!("account-{id}"), evolve, |a| match a.open {
            true => Err(BankError::AlreadyOpen),
            false => Ok(vec![opened.clone()]),
        })
        .await
        .map(drop)
}

async fn deposit(store: &EventStore, id: &str, amount: u64) -> Outcome {
    store
        .decide_stream(format!("account-{id}"), evolve, |a| match a.open {
            true => Ok(vec![BankEvent::Deposited {
                amount,
                memo: "counter".into(),
            }]),
            false => Err(BankError::NoSuchAccount),
        })
        .await
        .map(drop)
}

/// The withdrawal: a few lines, however many tellers race for the account.
async fn withdraw(store: &EventStore, id: &str, amount: u64) -> Outcome {
    store
        .decide_stream(format!("account-{id}"), evolve, |a| match a {
            Account { open: false, .. } => Err(BankError::NoSuchAccount),
            Account { balance, .. } if *balance < amount => Err(BankError::Insufficient {
                balance: *balance,
                wanted: amount,
            }),
            _ => Ok(vec![BankEvent::Withdrawn { amount }]),
        })
        .await
        .map(drop)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kv = Arc::new(MemoryStore::new());

    // Last year's program: deposits without a memo (schema version 1).
    let old = EventStore::open(kv.clone()).await?;
    old.append_to_stream(
        "account-a0",
        ExpectedVersion::NoStream,
        vec![
            NewEvent::json("AccountOpened", &serde_json::json!({"owner": "bob"}))?
                .with_tags(["owner:bob"]),
            NewEvent::json("MoneyDeposited", &serde_json::json!({"amount": 40}))?,
        ],
    )
    .await?;
    drop(old);

    // Today's program registers the upcaster from version 1: every read
    // path (streams, the log, queries, subscriptions, deciders) sees
    // version 2.
    let options = EventStoreOptions::default().upcast_json("MoneyDeposited", 1, |mut v| {
        v["memo"] = "no memo".into();
        Ok(v)
    });
    let store = EventStore::open_with(kv, options).await?;

    // A statement printer: a subscription on the `account` category,
    // consumed as a Stream, that decodes each event into `BankEvent` and
    // acknowledges it. `next()` on the pinned subscription is
    // `StreamExt::next`, cancellation-safe inside `select!`.
    let statement = store
        .subscribe(
            SubscriptionOptions::named("statement")
                .filter(SubscriptionFilter::Category("account".into())),
        )
        .await?;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let printer = tokio::spawn(async move {
        let mut events = std::pin::pin!(statement);
        loop {
            let e = tokio::select! {
                _ = &mut stopped => return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(()),
                e = events.next() => e.expect("a subscription is live")?,
            };
            let line = match e.to_typed::<BankEvent>()? {
                BankEvent::Opened { owner } => format!("opened for {owner}"),
                BankEvent::Deposited { amount, memo } => format!("+{amount} ({memo})"),
                BankEvent::Withdrawn { amount } => format!("-{amount}"),
            };
            let stream = e
                .stream
                .as_ref()
                .map(|s| format!("{} v{}", s.stream_id, s.version));
            println!(
                "   statement #{}: {} {line}",
                e.position,
                stream.unwrap_or_default()
            );
            events.ack(e.position).await?;
        }
    });

    // The old account's deposit reads back at version 2.
    deposit(&store, "a0", 2).await?;
    let a0 = store.read_stream("account-a0", Default::default()).await?;
    assert_eq!(a0[1].schema_version(), 2);
    assert_eq!(
        a0[1].to_typed::<BankEvent>()?,
        BankEvent::Deposited {
            amount: 40,
            memo: "no memo".into()
        }
    );

    open(&store, "a1", "ann").await?;
    deposit(&store, "a1", 100).await?;
    println!("account a1 holds 100; five tellers withdraw 30 at once:");
    let tellers: Vec<_> = (0..5)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move { (t, withdraw(&store, "a1", 30).await) })
        })
        .collect();
    let mut paid = 0;
    for teller in tellers {
        match teller.await? {
            (t, Ok(())) => {
                paid += 30;
                println!("   teller {t}: paid out 30");
            }
            (t, Err(DecideError::Rejected(why))) => println!("   teller {t}: refused, {why}"),
            (_, Err(e)) => return Err(e.into()),
        }
    }
    assert_eq!(paid, 90, "three withdrawals fit, the other two are refused");
    assert!(matches!(
        withdraw(&store, "nope", 1).await,
        Err(DecideError::Rejected(BankError::NoSuchAccount))
    ));

    // Let the statement catch up, then stop it.
    let head = store.head().await?;
    while store.checkpoint("statement").await?.unwrap_or(0) < head {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let _ = stop.send(());
    printer.await?.map_err(|e| e.to_string())?;
    println!("balance left: {}", 100 - paid);
    Ok(())
}
