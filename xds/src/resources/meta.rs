//! Endpoint and route metadata (`google.protobuf.Struct`) <-> [`MetaValue`] maps.

use std::collections::BTreeMap;

use xds_api::pb::google::protobuf as pb;

use crate::model::MetaValue;

pub(super) fn meta_to_value(v: &MetaValue) -> pb::Value {
    use pb::value::Kind;
    pb::Value {
        kind: Some(match v {
            MetaValue::Bool(b) => Kind::BoolValue(*b),
            MetaValue::Number(n) => Kind::NumberValue(*n as f64),
            MetaValue::String(s) => Kind::StringValue(s.clone()),
        }),
    }
}

pub(super) fn value_to_meta(v: &pb::Value) -> Result<MetaValue, String> {
    use pb::value::Kind;
    match &v.kind {
        Some(Kind::BoolValue(b)) => Ok(MetaValue::Bool(*b)),
        Some(Kind::StringValue(s)) => Ok(MetaValue::String(s.clone())),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
            Ok(MetaValue::Number(*n as i64))
        }
        Some(Kind::NumberValue(n)) => Err(format!("number {n} is not an integer")),
        _ => Err("value must be a string, bool or number".into()),
    }
}

pub(super) fn struct_of(map: &BTreeMap<String, MetaValue>) -> pb::Struct {
    pb::Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), meta_to_value(v)))
            .collect(),
    }
}

pub(super) fn meta_of(s: &pb::Struct) -> Result<BTreeMap<String, MetaValue>, String> {
    s.fields
        .iter()
        .map(|(k, v)| {
            value_to_meta(v)
                .map(|m| (k.clone(), m))
                .map_err(|e| format!("{k}: {e}"))
        })
        .collect()
}

pub(super) fn num(n: u64) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::NumberValue(n as f64)),
    }
}

pub(super) fn string(s: &str) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::StringValue(s.to_owned())),
    }
}
