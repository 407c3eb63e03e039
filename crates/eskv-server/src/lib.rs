//! eskv as a gRPC server that existing clients already speak: UmaDB's DCB
//! protocol and KurrentDB's streams protocol, over any eskv backend.
//!
//! The caller opens the store (any backend) and hands it over; the server
//! serves it until told to stop, then shuts down gracefully.
//!
//! ```no_run
//! use eskv_core::{EventStore, MemoryStore};
//! use eskv_server::{Server, ServerConfig};
//! use std::sync::Arc;
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = EventStore::open(Arc::new(MemoryStore::new())).await?;
//! let server = Server::bind(store, ServerConfig::new("127.0.0.1:50051".parse()?)).await?;
//! server.serve_until(eskv_server::shutdown_signal()).await?;
//! # Ok(()) }
//! ```
//!
//! # What is served
//!
//! - `umadb.v1.DCB` ([UmaDB](https://umadb.io)'s protocol): `Read`
//!   (query, start, backwards, limit, batch size, subscribe), `Subscribe`,
//!   `Append` with its condition and tracking info, `Head`,
//!   `GetTrackingInfo`. Errors carry UmaDB's `ErrorResponse` details, so a
//!   failed condition is the client's integrity error. Event UUIDs are
//!   eskv event ids (same 128 bits), so eskv's idempotency applies.
//! - `event_store.client.streams.Streams` (KurrentDB): `Append` with
//!   expected revisions, `Read` of streams and `$all` both ways, catch-up
//!   subscriptions to a stream or `$all` with filters on stream name or
//!   event type (prefixes or regular expressions) and checkpoints.
//!   `Delete` and `Tombstone` are eskv's soft delete and tombstone with
//!   KurrentDB's expected revisions and errors: a soft-deleted stream reads
//!   as not found and is re-created by appending; a tombstoned one answers
//!   with KurrentDB's stream-deleted status (trailers `exception:
//!   stream-deleted`, `stream-name`), the clients' stream-deleted error.
//!   eskv's lifecycle events (`$stream-deleted`, …) appear in `$all` with
//!   `$` types. `BatchAppend` (which the Python client uses) appends like
//!   `Append`.
//! - `ServerFeatures.GetSupportedMethods` and `Gossip.Read`, which KurrentDB
//!   clients call when they connect.
//! - `grpc.health.v1.Health`.
//!
//! # Security
//!
//! TLS from PEM files ([`TlsConfig`], rustls). With credentials configured
//! ([`Credential`]), a request without a valid `authorization` header gets
//! `UNAUTHENTICATED` and a reply that names nothing about the store. A
//! credential may name a tenant: its requests then see only that tenant's
//! namespace (a [`Namespaced`](eskv_core::Namespaced) view of the store).
//! [`ServerLimits`] bounds message sizes, subscriptions per connection and
//! requests per connection; every stream goes through a bounded queue, so
//! a slow subscriber holds back its own reads, not the server's memory.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod context;
mod dcb;
mod dcb_map;
mod error;
mod ids;
mod kurrent;
mod kurrent_batch;
mod kurrent_cluster;
mod kurrent_lifecycle;
mod kurrent_map;
mod proto;
mod server;

pub use config::{Credential, ServerConfig, ServerLimits, TlsConfig};
pub use error::ServerError;
pub use server::{shutdown_signal, Server, ServerHandle};
