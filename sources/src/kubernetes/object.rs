//! The type the watchers decode objects into: kube's `DynamicObject` with
//! its fields filtered while they are decoded.
//!
//! A Pod is mostly what translation never reads (containers, their
//! statuses, volumes), and a cluster has tens of thousands of them: decoding
//! each into a `serde_json::Value` only to reduce it was a third of the
//! hub's CPU in a first listing (docs/benchmarks.md, "Kubernetes source").
//! Here the fields outside the hub's [`reduce::reads`] are skipped by the
//! parser (`IgnoredAny`: nothing built), so only the kept part is ever
//! allocated; the hub's validation then reduces it to the same body.
//!
//! The kind is a type parameter because `Deserialize` has no context: list
//! items of built-in kinds carry no `kind` of their own.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use keelson_hub::reduce::{self, Keep};
use kube::core::{ApiResource, DynamicResourceScope, Resource};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Which fields a [`Watched`] keeps.
pub trait Fields: Clone + fmt::Debug + Send + Sync + 'static {
    const KEEP: Keep;
}

/// Every field (config kinds, Services, EndpointSlices).
#[derive(Clone, Debug)]
pub struct AllFields;
impl Fields for AllFields {
    const KEEP: Keep = Keep::All;
}

#[derive(Clone, Debug)]
pub struct PodFields;
impl Fields for PodFields {
    const KEEP: Keep = reduce::POD_READS;
}

#[derive(Clone, Debug)]
pub struct NodeFields;
impl Fields for NodeFields {
    const KEEP: Keep = reduce::NODE_READS;
}

/// An object as watched: its metadata, typed (provenance reads its
/// resourceVersion and managedFields), and its other kept fields.
#[derive(Clone, Debug)]
pub struct Watched<F> {
    pub metadata: ObjectMeta,
    /// Top-level fields but `apiVersion`, `kind` and `metadata`.
    pub data: Map<String, Value>,
    fields: PhantomData<F>,
}

impl<F> Watched<F> {
    pub fn new(metadata: ObjectMeta, data: Map<String, Value>) -> Self {
        Watched { metadata, data, fields: PhantomData }
    }
}

impl<F: Fields> Resource for Watched<F> {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }
    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }
    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<'de, F: Fields> serde::Deserialize<'de> for Watched<F> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Top<F>(PhantomData<F>);
        impl<'de, F: Fields> Visitor<'de> for Top<F> {
            type Value = Watched<F>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a Kubernetes object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut metadata, mut data) = (None, Map::new());
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "metadata" => metadata = Some(map.next_value::<ObjectMeta>()?),
                        // Set again from the served version by the conversion.
                        "apiVersion" | "kind" => {
                            map.next_value::<IgnoredAny>()?;
                        }
                        _ => match kept(F::KEEP, &key) {
                            Some(keep) => {
                                data.insert(key, map.next_value_seed(Filtered(keep))?);
                            }
                            None => {
                                map.next_value::<IgnoredAny>()?;
                            }
                        },
                    }
                }
                let metadata = metadata.ok_or_else(|| de::Error::missing_field("metadata"))?;
                Ok(Watched::new(metadata, data))
            }
        }
        d.deserialize_map(Top(PhantomData))
    }
}

/// How a field of a value kept as `keep` is kept, `None` if it is not.
fn kept(keep: Keep, field: &str) -> Option<Keep> {
    match keep {
        Keep::All => Some(Keep::All),
        Keep::Only(fields) => fields.iter().find(|(name, _)| *name == field).map(|(_, k)| *k),
    }
}

/// Decodes one value, keeping only what `Keep` names of its mappings.
struct Filtered(Keep);

impl<'de> DeserializeSeed<'de> for Filtered {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0 {
            Keep::All => serde::Deserialize::deserialize(d),
            Keep::Only(_) => d.deserialize_any(self),
        }
    }
}

/// A value under `Keep::Only`: a mapping is filtered; anything else (a
/// malformed object: validation says what is wrong with it) is kept whole.
impl<'de> Visitor<'de> for Filtered {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match kept(self.0, &key) {
                Some(keep) => {
                    out.insert(key, map.next_value_seed(Filtered(keep))?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<Value>()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
}
