//! A small etcd v3 client: the unary calls eskv needs, over one balanced
//! tonic channel, with authentication tokens and TLS.
//!
//! It replaces the `etcd-client` crate, whose build script needs `protoc`:
//! the messages are in [`crate::proto`], and each call is a plain
//! [`tonic::client::Grpc::unary`] on etcd's method path. Errors stay raw
//! ([`ClientError`]); the store maps them in `error.rs`, its one
//! error-mapping site.
use crate::config::EtcdOptions;
use crate::proto::{
    AuthenticateRequest, AuthenticateResponse, CompactionRequest, CompactionResponse,
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    StatusRequest, StatusResponse, TxnRequest, TxnResponse,
};
use http::uri::PathAndQuery;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tonic::client::Grpc;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_prost::ProstCodec;

/// What a call can fail with, before eskv gives it a meaning.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The server (or the channel on its behalf) answered with a status.
    Status(tonic::Status),
    /// The connection could not be set up or broke.
    Transport(tonic::transport::Error),
    /// The options cannot work (bad endpoint, unreadable certificate, ...).
    InvalidOptions(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Status(s) => write!(f, "{}: {}", s.code(), s.message()),
            ClientError::Transport(t) => write!(f, "transport error: {t}"),
            ClientError::InvalidOptions(m) => write!(f, "invalid options: {m}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Status(s) => Some(s),
            ClientError::Transport(t) => Some(t),
            ClientError::InvalidOptions(_) => None,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Status(s)
    }
}

/// The gRPC methods called, by their full path.
mod path {
    pub const RANGE: &str = "/etcdserverpb.KV/Range";
    pub const PUT: &str = "/etcdserverpb.KV/Put";
    pub const DELETE_RANGE: &str = "/etcdserverpb.KV/DeleteRange";
    pub const TXN: &str = "/etcdserverpb.KV/Txn";
    pub const COMPACT: &str = "/etcdserverpb.KV/Compact";
    pub const AUTHENTICATE: &str = "/etcdserverpb.Auth/Authenticate";
    pub const STATUS: &str = "/etcdserverpb.Maintenance/Status";
}

/// The user and password, kept to fetch a new token when one expires.
#[derive(Clone)]
struct Credentials {
    user: String,
    password: String,
}

/// An etcd client over every endpoint of a cluster. Cheap to clone; clones
/// share the channel and the authentication token.
#[derive(Clone)]
pub struct EtcdClient {
    grpc: Grpc<Channel>,
    credentials: Option<Credentials>,
    token: Arc<RwLock<Option<MetadataValue<Ascii>>>>,
}

impl fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdClient")
            .field("authenticated", &self.credentials.is_some())
            .finish_non_exhaustive()
    }
}

fn endpoint_uri(ep: &str, tls: bool) -> String {
    if ep.contains("://") {
        ep.to_string()
    } else if tls {
        format!("https://{ep}")
    } else {
        format!("http://{ep}")
    }
}

fn read_pem(what: &str, p: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(p).map_err(|e| {
        ClientError::InvalidOptions(format!(
            "TLS {what} file {} cannot be read: {e}",
            p.display()
        ))
    })
}

impl EtcdClient {
    /// A client for `options.remote.endpoints`, balanced over all of them.
    ///
    /// Calls carry no deadline of their own (`request_timeout` is applied
    /// by [`EtcdStore`](crate::EtcdStore) around each call): wrap raw calls
    /// in `tokio::time::timeout` where a deadline matters.
    ///
    /// The channel connects lazily: this fails only on bad options, or on a
    /// refused authentication. Send a request to find out whether the
    /// cluster is reachable.
    pub async fn connect(options: &EtcdOptions) -> Result<Self, ClientError> {
        let remote = &options.remote;
        if remote.endpoints.is_empty() {
            return Err(ClientError::InvalidOptions(
                "no etcd endpoints given; pass at least one host:port (for example 127.0.0.1:2379)"
                    .into(),
            ));
        }
        let tls = if remote.tls.is_enabled() {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &remote.tls.ca {
                tls = tls.ca_certificate(Certificate::from_pem(read_pem("CA certificate", ca)?));
            }
            match (&remote.tls.cert, &remote.tls.key) {
                (Some(c), Some(k)) => {
                    tls = tls.identity(Identity::from_pem(
                        read_pem("certificate", c)?,
                        read_pem("key", k)?,
                    ))
                }
                (None, None) => {}
                _ => {
                    return Err(ClientError::InvalidOptions(
                        "mutual TLS needs both a client certificate and its key (remote.tls.cert and remote.tls.key; see EtcdOptions::tls_identity)".into(),
                    ))
                }
            }
            Some(tls)
        } else {
            None
        };
        let mut endpoints = Vec::with_capacity(remote.endpoints.len());
        for ep in &remote.endpoints {
            let uri = endpoint_uri(ep, tls.is_some());
            let mut e = Endpoint::from_shared(uri.clone())
                .map_err(|e| {
                    ClientError::InvalidOptions(format!(
                        "etcd endpoint {ep:?} is not a valid URI ({uri}): {e}"
                    ))
                })?
                // No channel-wide request deadline: the store puts each
                // call under its own (`error::timed`), so that a commit
                // that times out is reported as an unknown outcome and a
                // probe gets the connect timeout.
                .connect_timeout(remote.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true);
            if let Some(tls) = &tls {
                e = e.tls_config(tls.clone()).map_err(|e| {
                    ClientError::InvalidOptions(format!("TLS settings for {ep}: {e}"))
                })?;
            }
            endpoints.push(e);
        }
        let channel = Channel::balance_list(endpoints.into_iter());
        let credentials = match (&options.user, &options.password) {
            (Some(u), Some(p)) => Some(Credentials {
                user: u.clone(),
                password: p.clone(),
            }),
            (None, None) => None,
            _ => {
                return Err(ClientError::InvalidOptions(
                    "etcd auth needs both a user and a password".into(),
                ))
            }
        };
        let client = EtcdClient {
            grpc: Grpc::new(channel),
            credentials,
            token: Arc::new(RwLock::new(None)),
        };
        Ok(client)
    }

    /// Caps the size of answers (default 4 MiB) and requests.
    pub fn with_message_limits(mut self, decode: usize, encode: usize) -> Self {
        self.grpc = self
            .grpc
            .max_decoding_message_size(decode)
            .max_encoding_message_size(encode);
        self
    }

    /// Fetches an authentication token when the client has credentials.
    async fn authenticate(&self) -> Result<(), ClientError> {
        let Some(c) = &self.credentials else {
            return Ok(());
        };
        let req = AuthenticateRequest {
            name: c.user.clone(),
            password: c.password.clone(),
        };
        let resp: AuthenticateResponse = self.send(path::AUTHENTICATE, req, false).await?;
        let token = MetadataValue::try_from(resp.token.as_str()).map_err(|_| {
            ClientError::Status(tonic::Status::unauthenticated(
                "etcd sent an authentication token that is not valid ASCII",
            ))
        })?;
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = Some(token);
        Ok(())
    }

    async fn send<Req, Resp>(
        &self,
        method: &'static str,
        body: Req,
        with_token: bool,
    ) -> Result<Resp, ClientError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.grpc.clone();
        grpc.ready().await.map_err(ClientError::Transport)?;
        let mut req = tonic::Request::new(body);
        // Fail fast on a member that lost its leader instead of waiting.
        req.metadata_mut()
            .insert("hasleader", MetadataValue::from_static("true"));
        if with_token {
            if let Some(t) = self.token.read().unwrap_or_else(|p| p.into_inner()).clone() {
                req.metadata_mut().insert("token", t);
            }
        }
        let resp = grpc
            .unary(
                req,
                PathAndQuery::from_static(method),
                ProstCodec::<Req, Resp>::default(),
            )
            .await?;
        Ok(resp.into_inner())
    }

    /// Sends a call, with a token when the client authenticates; fetches
    /// the token first, and again once when the server no longer takes it:
    /// it expired, or users, roles or permissions changed since it was
    /// issued (see `error::needs_new_token`, which decides).
    async fn call<Req, Resp>(&self, method: &'static str, body: Req) -> Result<Resp, ClientError>
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        if self.credentials.is_none() {
            return self.send(method, body, false).await;
        }
        let has_token = self
            .token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if !has_token {
            self.authenticate().await?;
        }
        match self.send(method, body.clone(), true).await {
            Err(ClientError::Status(s)) if crate::error::needs_new_token(&s) => {
                self.authenticate().await?;
                self.send(method, body, true).await
            }
            other => other,
        }
    }

    /// `KV.Range`: a get or a scan.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, ClientError> {
        self.call(path::RANGE, req).await
    }

    /// `KV.Put`.
    pub async fn put(&self, req: PutRequest) -> Result<PutResponse, ClientError> {
        self.call(path::PUT, req).await
    }

    /// `KV.DeleteRange`.
    pub async fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, ClientError> {
        self.call(path::DELETE_RANGE, req).await
    }

    /// `KV.Txn`.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, ClientError> {
        self.call(path::TXN, req).await
    }

    /// `KV.Compact`.
    pub async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse, ClientError> {
        self.call(path::COMPACT, req).await
    }

    /// `Maintenance.Status` of whichever member answers.
    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        self.call(path::STATUS, StatusRequest {}).await
    }
}

#[cfg(test)]
mod tests {
    use crate::proto::*;
    use prost::Message;

    /// Pins the field tags against etcd's `rpc.proto` by their encoding:
    /// a key is `(tag << 3) | wire type`.
    #[test]
    fn messages_encode_with_etcds_field_tags() {
        let range = RangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            limit: 1,
            revision: 2,
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Mod as i32,
            serializable: true,
            keys_only: true,
            count_only: true,
        };
        assert_eq!(
            range.encode_to_vec(),
            [
                0x0a, 1, b'a', 0x12, 1, b'b', 0x18, 1, 0x20, 2, 0x28, 2, 0x30, 3, 0x38, 1, 0x40, 1,
                0x48, 1
            ]
        );
        let cmp = Compare::mod_revision(b"k".to_vec(), CompareResult::Less, 5);
        assert_eq!(
            cmp.encode_to_vec(),
            [0x08, 2, 0x10, 2, 0x1a, 1, b'k', 0x30, 5]
        );
        let txn = TxnRequest {
            compare: vec![],
            success: vec![RequestOp::put(b"k".to_vec(), b"v".to_vec())],
            failure: vec![RequestOp::delete(b"k".to_vec())],
        };
        // success = 2 { request_put = 2 { key = 1, value = 2 } },
        // failure = 3 { request_delete_range = 3 { key = 1 } }
        assert_eq!(
            txn.encode_to_vec(),
            [0x12, 8, 0x12, 6, 0x0a, 1, b'k', 0x12, 1, b'v', 0x1a, 5, 0x1a, 3, 0x0a, 1, b'k']
        );
        let kv = KeyValue {
            key: b"k".to_vec(),
            create_revision: 1,
            mod_revision: 2,
            version: 3,
            value: b"v".to_vec(),
            lease: 4,
        };
        assert_eq!(
            kv.encode_to_vec(),
            [0x0a, 1, b'k', 0x10, 1, 0x18, 2, 0x20, 3, 0x2a, 1, b'v', 0x30, 4]
        );
        let header = ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: 3,
            raft_term: 4,
        };
        let resp = TxnResponse {
            header: Some(header.clone()),
            succeeded: true,
            responses: vec![ResponseOp {
                response: Some(response_op::Response::ResponseRange(RangeResponse {
                    header: None,
                    kvs: vec![kv],
                    more: true,
                    count: 1,
                })),
            }],
        };
        let decoded = TxnResponse::decode(resp.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, resp);
        assert_eq!(header.encode_to_vec(), [0x08, 1, 0x10, 2, 0x18, 3, 0x20, 4]);
        let status = StatusResponse {
            header: None,
            version: "3".into(),
            leader: 9,
        };
        assert_eq!(status.encode_to_vec(), [0x12, 1, b'3', 0x20, 9]);
        let del = DeleteRangeResponse {
            header: None,
            deleted: 7,
        };
        assert_eq!(del.encode_to_vec(), [0x10, 7]);
        let compact = CompactionRequest {
            revision: 3,
            physical: true,
        };
        assert_eq!(compact.encode_to_vec(), [0x08, 3, 0x10, 1]);
        let auth = AuthenticateRequest {
            name: "u".into(),
            password: "p".into(),
        };
        assert_eq!(auth.encode_to_vec(), [0x0a, 1, b'u', 0x12, 1, b'p']);
    }
}
