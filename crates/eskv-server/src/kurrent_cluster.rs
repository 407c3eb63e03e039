//! The calls KurrentDB clients make when they connect: which methods the
//! server has (`ServerFeatures`), and which node leads (`Gossip`).

use crate::proto::event_store::client::gossip::{self, gossip_server::Gossip};
use crate::proto::event_store::client::server_features::{
    server_features_server::ServerFeatures, SupportedMethod, SupportedMethods,
};
use crate::proto::event_store::client::{self as shared, Empty};
use tonic::{Request, Response, Status};

/// The version reported to clients; they pick protocol features by it
/// (24.10 predates the streams v2 services, which eskv does not serve).
const SERVER_VERSION: &str = "24.10.0";

pub(crate) struct FeaturesService;

pub(crate) struct GossipService;

#[tonic::async_trait]
impl ServerFeatures for FeaturesService {
    async fn get_supported_methods(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<SupportedMethods>, Status> {
        let m = |service: &str, method: &str, features: &[&str]| SupportedMethod {
            method_name: method.into(),
            service_name: service.into(),
            features: features.iter().map(|f| (*f).into()).collect(),
        };
        let streams = "event_store.client.streams.streams";
        Ok(Response::new(SupportedMethods {
            methods: vec![
                m(streams, "read", &["position", "events"]),
                m(streams, "append", &[]),
                m(streams, "batchappend", &[]),
                m(
                    "event_store.client.server_features.serverfeatures",
                    "getsupportedmethods",
                    &[],
                ),
                m("event_store.client.gossip.gossip", "read", &[]),
            ],
            event_store_server_version: SERVER_VERSION.into(),
        }))
    }
}

#[tonic::async_trait]
impl Gossip for GossipService {
    async fn read(&self, req: Request<Empty>) -> Result<Response<gossip::ClusterInfo>, Status> {
        let addr = req.local_addr();
        let now_ticks = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| (d.as_nanos() / 100) as i64);
        let member = gossip::MemberInfo {
            instance_id: Some(shared::Uuid {
                value: Some(shared::uuid::Value::String(crate::ids::uuid_text(
                    eskv_core::Ulid(1),
                ))),
            }),
            time_stamp: now_ticks,
            state: gossip::member_info::VNodeState::Leader as i32,
            is_alive: true,
            http_end_point: addr.map(|a| gossip::EndPoint {
                address: a.ip().to_string(),
                port: u32::from(a.port()),
            }),
        };
        Ok(Response::new(gossip::ClusterInfo {
            members: vec![member],
        }))
    }
}
