//! A deserializer adapter that reports unknown fields and parses on, so one
//! parse finds every unknown field of a manifest along with its other problems.
//!
//! serde's `deny_unknown_fields` stops at the first unknown key. Cutting that
//! key out of the text and parsing again cannot be done faithfully: an anchor
//! defined in the cut value leaves its aliases dangling (a false "unknown
//! anchor"), and a key inside a flow mapping cannot be cut by lines at all.
//! Here the document is parsed once, exactly as written: an unknown key is
//! recorded with the error serde would have stopped at, and its value is
//! skipped by the parser, which still defines the value's anchors and still
//! reports what is really wrong inside it (a dangling alias, a budget breach).
//!
//! Architecture Invariant: every manifest struct denies unknown fields. The
//! adapter checks keys against the field list serde passes for a struct, so
//! it reports only what the struct itself would refuse; on a struct that
//! accepted unknown keys it would report them falsely.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use serde::de::value::{
    BorrowedStrDeserializer, BytesDeserializer, StringDeserializer, U64Deserializer,
};
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

/// The unknown fields found by one parse, in document order.
pub(crate) struct UnknownFields {
    found: RefCell<Vec<serde_saphyr::Error>>,
    limit: usize,
}

impl UnknownFields {
    /// After `limit` unknown fields the parse stops at the last one, as it
    /// would without this adapter: a document of thousands of stray keys
    /// gets a bounded report.
    pub(crate) fn new(limit: usize) -> Self {
        UnknownFields {
            found: RefCell::new(Vec::new()),
            limit: limit.max(1),
        }
    }

    /// `de`, reporting unknown fields here instead of failing on them.
    pub(crate) fn wrap<'s, D>(&'s self, de: D) -> Lenient<'s, D> {
        Lenient {
            inner: de,
            sink: self,
        }
    }

    /// Each unknown field as the error serde-saphyr would have stopped at,
    /// located at the key.
    pub(crate) fn into_errors(self) -> Vec<serde_saphyr::Error> {
        self.found.into_inner()
    }

    /// Whether `name` is one of a struct's `fields`; an unknown one is
    /// recorded, or is the `Err` that stops the parse once the limit is reached.
    fn is_known<E: de::Error>(
        &self,
        name: &str,
        fields: &'static [&'static str],
    ) -> Result<bool, E> {
        if fields.contains(&name) {
            return Ok(true);
        }
        // serde-saphyr locates errors made while a key is current (as is the
        // `unknown_field` serde itself would raise) at that key.
        let error = <serde_saphyr::Error as de::Error>::unknown_field(name, fields);
        let mut found = self.found.borrow_mut();
        // Each alias of an anchored mapping replays its keys at their
        // definition: one key, one report.
        let again = found
            .iter()
            .any(|f| f.location() == error.location() && f.to_string() == error.to_string());
        if again {
            return Ok(false);
        }
        if found.len() + 1 >= self.limit {
            return Err(E::unknown_field(name, fields));
        }
        found.push(error);
        Ok(false)
    }
}

/// The structs of serde-saphyr's own `Spanned` view: they come from the
/// parser, not from the text. A `Location` (and the `Span` in it) holds no
/// manifest struct, so it is not even wrapped; `Spanned` holds the value.
fn is_location(name: &str) -> bool {
    matches!(name, "Location" | "Span")
}

const SPANNED: &str = "Spanned";

/// A [`Deserializer`] that passes everything to `inner` and wraps what it
/// hands back, so that every struct below it is checked.
pub(crate) struct Lenient<'s, D> {
    inner: D,
    sink: &'s UnknownFields,
}

struct Wrap<'s, X> {
    inner: X,
    sink: &'s UnknownFields,
    /// A struct's field names, when `inner` visits one.
    fields: Option<&'static [&'static str]>,
}

impl<'s, X> Wrap<'s, X> {
    fn new(inner: X, sink: &'s UnknownFields) -> Self {
        Wrap {
            inner,
            sink,
            fields: None,
        }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method(Wrap::new(visitor, self.sink))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Lenient<'_, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_option deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_unit_struct(name, Wrap::new(visitor, self.sink))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_newtype_struct(name, Wrap::new(visitor, self.sink))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_tuple(len, Wrap::new(visitor, self.sink))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_tuple_struct(name, len, Wrap::new(visitor, self.sink))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        if is_location(name) {
            return self.inner.deserialize_struct(name, fields, visitor);
        }
        let visitor = Wrap {
            inner: visitor,
            sink: self.sink,
            fields: (name != SPANNED).then_some(fields),
        };
        self.inner.deserialize_struct(name, fields, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_enum(name, variants, Wrap::new(visitor, self.sink))
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($t:ty))*) => {$(
        fn $method<E: de::Error>(self, v: $t) -> Result<V::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool) visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64)
        visit_i128(i128) visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64)
        visit_u128(u128) visit_f32(f32) visit_f64(f64) visit_char(char)
        visit_str(&str) visit_borrowed_str(&'de str) visit_string(String)
        visit_bytes(&[u8]) visit_borrowed_bytes(&'de [u8]) visit_byte_buf(Vec<u8>)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(self.sink.wrap(d))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(self.sink.wrap(d))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(Wrap::new(seq, self.sink))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(Wrap {
            inner: map,
            sink: self.sink,
            fields: self.fields,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(Wrap::new(data, self.sink))
    }
}

impl<'de, T: DeserializeSeed<'de>> DeserializeSeed<'de> for Wrap<'_, T> {
    type Value = T::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T::Value, D::Error> {
        self.inner.deserialize(self.sink.wrap(d))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Wrap<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.inner.next_element_seed(Wrap::new(seed, self.sink))
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Wrap<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let Some(fields) = self.fields else {
            return self.inner.next_key_seed(Wrap::new(seed, self.sink));
        };
        loop {
            let Some(key) = self.inner.next_key_seed(KeySeed)? else {
                return Ok(None);
            };
            let known = match &key {
                Key::Str(name) => self.sink.is_known(name, fields)?,
                Key::Bytes(b) => match std::str::from_utf8(b) {
                    Ok(name) => self.sink.is_known(name, fields)?,
                    Err(_) => true, // the struct names its own error
                },
                Key::Index(_) => true,
            };
            if known {
                return match key {
                    Key::Str(Cow::Borrowed(s)) => seed.deserialize(BorrowedStrDeserializer::new(s)),
                    Key::Str(Cow::Owned(s)) => seed.deserialize(StringDeserializer::new(s)),
                    Key::Bytes(b) => seed.deserialize(BytesDeserializer::new(&b)),
                    Key::Index(i) => seed.deserialize(U64Deserializer::new(i)),
                }
                .map(Some);
            }
            self.inner.next_value::<IgnoredAny>()?;
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.next_value_seed(Wrap::new(seed, self.sink))
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, 's, A: EnumAccess<'de>> EnumAccess<'de> for Wrap<'s, A> {
    type Error = A::Error;
    type Variant = Wrap<'s, A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let (value, variant) = self.inner.variant_seed(Wrap::new(seed, self.sink))?;
        Ok((value, Wrap::new(variant, self.sink)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Wrap<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.newtype_variant_seed(Wrap::new(seed, self.sink))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner.tuple_variant(len, Wrap::new(visitor, self.sink))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let visitor = Wrap {
            inner: visitor,
            sink: self.sink,
            fields: Some(fields),
        };
        self.inner.struct_variant(fields, visitor)
    }
}

/// A struct's key as serde's derived field visitors accept it.
enum Key<'de> {
    Str(Cow<'de, str>),
    Bytes(Vec<u8>),
    Index(u64),
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key<'de>, D::Error> {
        d.deserialize_identifier(KeySeed)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The words of serde's derived field visitors.
        f.write_str("field identifier")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key<'de>, E> {
        Ok(Key::Index(v))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
        Ok(Key::Str(Cow::Owned(v)))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Key<'de>, E> {
        Ok(Key::Bytes(v.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;

    use crate::manifest::*;

    /// The module's invariant: a struct that accepted unknown keys would
    /// have them reported here all the same.
    #[test]
    fn every_manifest_struct_denies_unknown_fields() {
        fn denies<T: DeserializeOwned>() -> bool {
            // An unknown key is refused before any missing field is noticed.
            serde_saphyr::from_str::<T>("zz_unknown: 1\n")
                .is_err_and(|e| e.to_string().contains("unknown field `zz_unknown`"))
        }
        assert!(denies::<FleetSpec>());
        assert!(denies::<FleetAcme>());
        assert!(denies::<FleetHost>());
        assert!(denies::<Defaults>());
        assert!(denies::<SiteSpec>());
        assert!(denies::<UpstreamSpec>());
        assert!(denies::<AuthSpec>());
        assert!(denies::<AuthUser>());
        assert!(denies::<RateLimit>());
        assert!(denies::<StackSpec>());
        assert!(denies::<ServiceSpec>());
        assert!(denies::<Healthcheck>());
    }
}
