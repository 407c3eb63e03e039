//! etcd's `Auth` service, for tests that turn authentication on: users,
//! roles, prefix permissions. eskv's client speaks only the calls the
//! store makes, so these few are written out here the same way (prost
//! messages with etcd's field tags from `rpc.proto` and `auth.proto`, one
//! unary tonic call each).

use eskv_etcd::proto::{AuthenticateRequest, AuthenticateResponse};
use http::uri::PathAndQuery;
use tonic::client::Grpc;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct UserAddRequest {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    password: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RoleAddRequest {
    #[prost(string, tag = "1")]
    name: String,
}

/// `authpb.Permission`; `perm_type` 2 is READWRITE.
#[derive(Clone, PartialEq, prost::Message)]
struct Permission {
    #[prost(int32, tag = "1")]
    perm_type: i32,
    #[prost(bytes = "vec", tag = "2")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    range_end: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RoleGrantPermissionRequest {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    perm: Option<Permission>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct UserGrantRoleRequest {
    #[prost(string, tag = "1")]
    user: String,
    #[prost(string, tag = "2")]
    role: String,
}

/// `AuthEnableRequest`, and every answer: only their headers, which the
/// tests do not read.
#[derive(Clone, PartialEq, prost::Message)]
struct Empty {}

const READWRITE: i32 = 2;

/// An administrator's connection to one member: before auth is enabled
/// no token is needed; after [`Admin::enable_auth`] it acts as `root`.
pub struct Admin {
    grpc: Grpc<Channel>,
    token: Option<MetadataValue<Ascii>>,
}

impl Admin {
    /// Connects to `endpoint` (`host:port`).
    pub async fn connect(endpoint: &str) -> Admin {
        let channel = Endpoint::from_shared(format!("http://{endpoint}"))
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"));
        Admin {
            grpc: Grpc::new(channel),
            token: None,
        }
    }

    async fn call<Req, Resp>(&mut self, method: &'static str, body: Req) -> Resp
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc.ready().await.unwrap();
        let mut req = tonic::Request::new(body);
        if let Some(t) = &self.token {
            req.metadata_mut().insert("token", t.clone());
        }
        self.grpc
            .unary(
                req,
                PathAndQuery::from_static(method),
                ProstCodec::<Req, Resp>::default(),
            )
            .await
            .unwrap_or_else(|s| panic!("{method}: {s}"))
            .into_inner()
    }

    /// Adds a user.
    pub async fn user_add(&mut self, name: &str, password: &str) {
        let req = UserAddRequest {
            name: name.into(),
            password: password.into(),
        };
        let _: Empty = self.call("/etcdserverpb.Auth/UserAdd", req).await;
    }

    /// Adds a role; this (like any change to users, roles or permissions)
    /// raises the auth store's revision.
    pub async fn role_add(&mut self, name: &str) {
        let req = RoleAddRequest { name: name.into() };
        let _: Empty = self.call("/etcdserverpb.Auth/RoleAdd", req).await;
    }

    /// Grants `role` read-write on every key that starts with `prefix`.
    pub async fn grant_prefix(&mut self, role: &str, prefix: &[u8]) {
        let req = RoleGrantPermissionRequest {
            name: role.into(),
            perm: Some(Permission {
                perm_type: READWRITE,
                key: prefix.to_vec(),
                range_end: eskv_core::tuple::prefix_successor(prefix).expect("a bounded prefix"),
            }),
        };
        let _: Empty = self
            .call("/etcdserverpb.Auth/RoleGrantPermission", req)
            .await;
    }

    /// Gives `user` the role `role`.
    pub async fn grant_role(&mut self, user: &str, role: &str) {
        let req = UserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        };
        let _: Empty = self.call("/etcdserverpb.Auth/UserGrantRole", req).await;
    }

    /// Adds `root` (with the root role) and enables authentication, then
    /// logs in as `root` for the calls that follow.
    pub async fn enable_auth(&mut self, root_password: &str) {
        self.user_add("root", root_password).await;
        self.grant_role("root", "root").await;
        let _: Empty = self.call("/etcdserverpb.Auth/AuthEnable", Empty {}).await;
        self.login("root", root_password).await;
    }

    /// Fetches a token for `user` for the calls that follow (again after
    /// an auth change, when tokens are JWTs).
    pub async fn login(&mut self, user: &str, password: &str) {
        let req = AuthenticateRequest {
            name: user.into(),
            password: password.into(),
        };
        let resp: AuthenticateResponse = self.call("/etcdserverpb.Auth/Authenticate", req).await;
        self.token = Some(MetadataValue::try_from(resp.token.as_str()).unwrap());
    }
}
