//! The gRPC messages and service traits, generated from `proto/` by
//! `cargo xtask protos` and checked in (so building needs no `protoc`).
#![allow(missing_docs, dead_code, clippy::all, clippy::pedantic, rustdoc::all)]

pub mod umadb {
    pub mod v1 {
        include!("proto/umadb.v1.rs");
    }
}

pub mod google {
    pub mod rpc {
        include!("proto/google.rpc.rs");
    }
}

pub mod event_store {
    pub mod client {
        include!("proto/event_store.client.rs");
        pub mod streams {
            include!("proto/event_store.client.streams.rs");
        }
        pub mod server_features {
            include!("proto/event_store.client.server_features.rs");
        }
        pub mod gossip {
            include!("proto/event_store.client.gossip.rs");
        }
    }
}
