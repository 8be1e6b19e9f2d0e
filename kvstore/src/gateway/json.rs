//! etcd's messages to and from JSON as etcd 3.4's grpc-gateway writes and reads them (its
//! `JSONPb{OrigName: true}`): field names as written in the `.proto`, fields at their zero value
//! left out, bytes as base64, 64-bit integers as strings, enums by name. Reading takes either
//! field name form, numbers or strings for integers, enum names or numbers, and skips unknown
//! fields. Messages are found by name in the descriptor set `build.rs` keeps from compiling
//! the `.proto` files, so the gateway needs no hand-written mapping per message.

use std::sync::OnceLock;

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, MethodDescriptor,
    SerializeOptions,
};

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// The compiled `.proto` files; `None` only if the build embedded a broken set.
fn pool() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| match DescriptorPool::decode(DESCRIPTORS) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(error = %e, "the embedded descriptor set does not decode");
            None
        }
    })
    .as_ref()
}

/// The method `name` of gRPC service `service` (e.g. `etcdserverpb.KV`, `Range`), if the
/// `.proto` files declare it.
pub(crate) fn method(service: &str, name: &str) -> Option<MethodDescriptor> {
    pool()?
        .get_service_by_name(service)?
        .methods()
        .find(|m| m.name() == name)
}

/// The protobuf encoding of the JSON object `value` read as a `desc`; the error text says why
/// it does not read.
pub(crate) fn encode(desc: &MessageDescriptor, value: serde_json::Value) -> Result<Bytes, String> {
    let opts = DeserializeOptions::new().deny_unknown_fields(false);
    let msg = DynamicMessage::deserialize_with_options(desc.clone(), value, &opts)
        .map_err(|e| e.to_string())?;
    Ok(Bytes::from(msg.encode_to_vec()))
}

/// The JSON of the protobuf-encoded `desc` in `bytes`.
pub(crate) fn decode(desc: &MessageDescriptor, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let msg = DynamicMessage::decode(desc.clone(), bytes).map_err(|e| e.to_string())?;
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true)
        .stringify_64_bit_integers(true)
        .use_enum_numbers(false);
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    msg.serialize_with_options(&mut ser, &opts)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// The first JSON value in `buf`, as Go's `json.Decoder` reads a request body: `None` when
/// it holds only whitespace (grpc-gateway then sends the empty message); what follows the value
/// is not read.
pub(crate) fn first_value(buf: &[u8]) -> Result<Option<serde_json::Value>, String> {
    match serde_json::Deserializer::from_slice(buf)
        .into_iter::<serde_json::Value>()
        .next()
    {
        None => Ok(None),
        Some(Ok(v)) => Ok(Some(v)),
        Some(Err(e)) if e.is_eof() => Err("unexpected EOF".into()),
        Some(Err(e)) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(name: &str) -> MessageDescriptor {
        pool()
            .and_then(|p| p.get_message_by_name(name))
            .expect("descriptor")
    }

    #[test]
    fn shapes_are_grpc_gateway_s() {
        let put = desc("etcdserverpb.PutRequest");
        let bytes = encode(
            &put,
            serde_json::json!({"key": "Zm9v", "value": "YmFy", "lease": "7", "prevKv": true, "x": 1}),
        )
        .expect("encode");
        let json = String::from_utf8(decode(&put, &bytes).expect("decode")).expect("utf-8");
        assert_eq!(
            json,
            r#"{"key":"Zm9v","value":"YmFy","lease":"7","prev_kv":true}"#
        );
        let range = desc("etcdserverpb.RangeRequest");
        let bytes =
            encode(&range, serde_json::json!({"sort_order": 2, "limit": 5})).expect("encode");
        let json = String::from_utf8(decode(&range, &bytes).expect("decode")).expect("utf-8");
        assert_eq!(json, r#"{"limit":"5","sort_order":"DESCEND"}"#);
        assert!(encode(&range, serde_json::json!({"limit": "x"})).is_err());
    }

    #[test]
    fn the_first_value_is_read() {
        assert_eq!(
            first_value(br#" {"a":1} {"b":"#),
            Ok(Some(serde_json::json!({"a": 1})))
        );
        assert_eq!(first_value(b"  \n"), Ok(None));
        assert!(first_value(b"{bad").is_err());
        assert!(first_value(b"{\"a\":").is_err());
    }
}
