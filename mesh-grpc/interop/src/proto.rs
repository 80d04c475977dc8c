//! The `grpc.testing` messages and services the xDS interop contract uses, written with
//! prost's derive (field numbers and names as in grpc's `messages.proto`, `empty.proto` and
//! `test.proto`), so the build needs no protoc. Only the fields the contract reads are here;
//! prost skips the others on the wire.

use std::collections::HashMap;

/// `grpc.testing.Empty`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Empty {}

/// `grpc.testing.Payload`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// `PayloadType` (always `COMPRESSABLE` = 0 here).
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    /// The payload's bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub body: Vec<u8>,
}

/// `grpc.testing.SimpleRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SimpleRequest {
    /// Bytes of payload the reply should carry.
    #[prost(int32, tag = "2")]
    pub response_size: i32,
    /// The request's payload.
    #[prost(message, optional, tag = "3")]
    pub payload: Option<Payload>,
    /// Whether the reply should name the server.
    #[prost(bool, tag = "9")]
    pub fill_server_id: bool,
}

/// `grpc.testing.SimpleResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SimpleResponse {
    /// `response_size` bytes.
    #[prost(message, optional, tag = "1")]
    pub payload: Option<Payload>,
    /// The server's `--server_id`.
    #[prost(string, tag = "4")]
    pub server_id: String,
    /// The server's host name: how the interop client tells backends apart.
    #[prost(string, tag = "6")]
    pub hostname: String,
}

/// `grpc.testing.LoadBalancerStatsRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LoadBalancerStatsRequest {
    /// Count the next `num_rpcs` RPCs sent.
    #[prost(int32, tag = "1")]
    pub num_rpcs: i32,
    /// Answer with what has completed after this long.
    #[prost(int32, tag = "2")]
    pub timeout_sec: i32,
}

/// `grpc.testing.LoadBalancerStatsResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LoadBalancerStatsResponse {
    /// Completed RPCs per peer (host name).
    #[prost(map = "string, int32", tag = "1")]
    pub rpcs_by_peer: HashMap<String, i32>,
    /// RPCs that failed, or that completed without naming a peer.
    #[prost(int32, tag = "2")]
    pub num_failures: i32,
    /// Completed RPCs per method (`EmptyCall`, `UnaryCall`), then per peer.
    #[prost(map = "string, message", tag = "3")]
    pub rpcs_by_method: HashMap<String, RpcsByPeer>,
}

/// `grpc.testing.LoadBalancerStatsResponse.RpcsByPeer`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcsByPeer {
    /// Completed RPCs per peer.
    #[prost(map = "string, int32", tag = "1")]
    pub rpcs_by_peer: HashMap<String, i32>,
}

/// `grpc.testing.LoadBalancerAccumulatedStatsRequest`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct LoadBalancerAccumulatedStatsRequest {}

/// `grpc.testing.LoadBalancerAccumulatedStatsResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LoadBalancerAccumulatedStatsResponse {
    /// Deprecated in the contract; kept because older drivers read it.
    #[prost(map = "string, int32", tag = "1")]
    pub num_rpcs_started_by_method: HashMap<String, i32>,
    /// Deprecated in the contract; kept because older drivers read it.
    #[prost(map = "string, int32", tag = "2")]
    pub num_rpcs_succeeded_by_method: HashMap<String, i32>,
    /// Deprecated in the contract; kept because older drivers read it.
    #[prost(map = "string, int32", tag = "3")]
    pub num_rpcs_failed_by_method: HashMap<String, i32>,
    /// Per method (`EMPTY_CALL`, `UNARY_CALL`): started, and completed per status code.
    #[prost(map = "string, message", tag = "4")]
    pub stats_per_method: HashMap<String, MethodStats>,
}

/// `grpc.testing.LoadBalancerAccumulatedStatsResponse.MethodStats`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MethodStats {
    /// RPCs started.
    #[prost(int32, tag = "1")]
    pub rpcs_started: i32,
    /// Completed RPCs per `google.rpc.Code`.
    #[prost(map = "int32, int32", tag = "2")]
    pub result: HashMap<i32, i32>,
}

/// `grpc.testing.ClientConfigureRequest.RpcType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum RpcType {
    /// `TestService.EmptyCall`.
    EmptyCall = 0,
    /// `TestService.UnaryCall`.
    UnaryCall = 1,
}

impl RpcType {
    /// The method's name (`EmptyCall`), as `--rpc` and `rpcs_by_method` spell it.
    pub fn method(self) -> &'static str {
        match self {
            Self::EmptyCall => "EmptyCall",
            Self::UnaryCall => "UnaryCall",
        }
    }

    /// The enum's name (`EMPTY_CALL`), as `stats_per_method` spells it.
    pub fn enum_name(self) -> &'static str {
        match self {
            Self::EmptyCall => "EMPTY_CALL",
            Self::UnaryCall => "UNARY_CALL",
        }
    }

    /// Parses a method name as `--rpc` and `--metadata` write it.
    pub fn from_method(s: &str) -> Option<Self> {
        match s {
            "EmptyCall" => Some(Self::EmptyCall),
            "UnaryCall" => Some(Self::UnaryCall),
            _ => None,
        }
    }
}

/// `grpc.testing.ClientConfigureRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClientConfigureRequest {
    /// The methods to send from now on.
    #[prost(enumeration = "RpcType", repeated, tag = "1")]
    pub types: Vec<i32>,
    /// Metadata per method.
    #[prost(message, repeated, tag = "2")]
    pub metadata: Vec<ConfigureMetadata>,
    /// The RPC deadline; 0 keeps the client's default.
    #[prost(int32, tag = "3")]
    pub timeout_sec: i32,
}

/// `grpc.testing.ClientConfigureRequest.Metadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigureMetadata {
    /// The method the entry applies to.
    #[prost(enumeration = "RpcType", tag = "1")]
    pub r#type: i32,
    /// The key.
    #[prost(string, tag = "2")]
    pub key: String,
    /// The value.
    #[prost(string, tag = "3")]
    pub value: String,
}

/// `grpc.testing.ClientConfigureResponse`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct ClientConfigureResponse {}

/// Method paths.
pub mod path {
    /// `TestService.EmptyCall`.
    pub const EMPTY_CALL: &str = "/grpc.testing.TestService/EmptyCall";
    /// `TestService.UnaryCall`.
    pub const UNARY_CALL: &str = "/grpc.testing.TestService/UnaryCall";
    /// `XdsUpdateHealthService.SetServing`.
    pub const SET_SERVING: &str = "/grpc.testing.XdsUpdateHealthService/SetServing";
    /// `XdsUpdateHealthService.SetNotServing`.
    pub const SET_NOT_SERVING: &str = "/grpc.testing.XdsUpdateHealthService/SetNotServing";
    /// `LoadBalancerStatsService.GetClientStats`.
    pub const GET_CLIENT_STATS: &str = "/grpc.testing.LoadBalancerStatsService/GetClientStats";
    /// `LoadBalancerStatsService.GetClientAccumulatedStats`.
    pub const GET_CLIENT_ACCUMULATED_STATS: &str =
        "/grpc.testing.LoadBalancerStatsService/GetClientAccumulatedStats";
    /// `XdsUpdateClientConfigureService.Configure`.
    pub const CONFIGURE: &str = "/grpc.testing.XdsUpdateClientConfigureService/Configure";
}
