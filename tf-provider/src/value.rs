//! Terraform values on the wire (`DynamicValue`): msgpack with unknowns as extensions, and the JSON form
//! Terraform uses for stored state.
//!
//! The codec is untyped: lists, sets and tuples are all [`Value::List`], maps and objects are
//! [`Value::Map`]. The schema (see [`crate::schema`]) gives them meaning and fills in missing keys.

use std::collections::BTreeMap;

use rmpv::Value as Mp;

/// A number as Terraform sent it. cty numbers are arbitrary precision: small ones arrive as msgpack
/// integers or floats, big ones as decimal strings; all three are accepted and written back as they came.
#[derive(Clone, Debug, PartialEq)]
pub enum Number {
    /// A msgpack integer.
    Int(i64),
    /// A msgpack unsigned integer above `i64::MAX`.
    UInt(u64),
    /// A msgpack float.
    Float(f64),
    /// A decimal string (numbers that do not fit the other forms).
    Text(String),
}

impl Number {
    /// The number as an `i64`, if it is a whole number in range.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Number::Int(i) => Some(*i),
            Number::UInt(u) => i64::try_from(*u).ok(),
            Number::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(*f as i64),
            Number::Float(_) => None,
            Number::Text(s) => s.parse::<i64>().ok().or_else(|| {
                let f: f64 = s.parse().ok()?;
                (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
            }),
        }
    }
}

/// What Terraform promises about a value it does not know yet (msgpack extension 12).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Refinements {
    /// Some(false): the value will not be null.
    pub nullness: Option<bool>,
    /// Strings: the final value starts with this.
    pub string_prefix: Option<String>,
    /// Numbers: lower bound and whether it is inclusive.
    pub number_lower: Option<(Number, bool)>,
    /// Numbers: upper bound and whether it is inclusive.
    pub number_upper: Option<(Number, bool)>,
    /// Collections: minimum length.
    pub length_min: Option<i64>,
    /// Collections: maximum length.
    pub length_max: Option<i64>,
}

impl Refinements {
    fn is_empty(&self) -> bool {
        *self == Refinements::default()
    }
}

/// A Terraform value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Known to be null.
    Null,
    /// Not known until apply, with whatever Terraform promised about it.
    Unknown(Refinements),
    /// A bool.
    Bool(bool),
    /// A number.
    Number(Number),
    /// A string.
    String(String),
    /// A list, set or tuple.
    List(Vec<Value>),
    /// A map or object.
    Map(BTreeMap<String, Value>),
}

/// Msgpack extension code of an unknown value without refinements.
const UNKNOWN_EXT: i8 = 0;
/// Msgpack extension code of a refined unknown value.
const REFINED_UNKNOWN_EXT: i8 = 12;

/// Why a DynamicValue could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Bytes are not msgpack.
    #[error("invalid msgpack: {0}")]
    Msgpack(String),
    /// Bytes are not JSON.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A msgpack item Terraform never sends (binary outside dynamic values, non-string map keys).
    #[error("unexpected msgpack item: {0}")]
    Unexpected(String),
}

impl Value {
    /// An unknown value without refinements.
    pub fn unknown() -> Self {
        Value::Unknown(Refinements::default())
    }

    /// A known string.
    pub fn str(s: impl Into<String>) -> Self {
        Value::String(s.into())
    }

    /// True for unknown values.
    pub fn is_unknown(&self) -> bool {
        matches!(self, Value::Unknown(_))
    }

    /// True for null.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// True when neither this value nor anything inside it is unknown.
    pub fn is_wholly_known(&self) -> bool {
        match self {
            Value::Unknown(_) => false,
            Value::List(items) => items.iter().all(Value::is_wholly_known),
            Value::Map(m) => m.values().all(Value::is_wholly_known),
            _ => true,
        }
    }

    /// Attribute `key` of an object (null when absent or when this is not a known object).
    pub fn get(&self, key: &str) -> &Value {
        match self {
            Value::Map(m) => m.get(key).unwrap_or(&Value::Null),
            _ => &Value::Null,
        }
    }

    /// The string, when known and a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, when known and a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The whole number, when known and a whole number.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    /// Encodes as msgpack, the form Terraform always accepts.
    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = rmpv::encode::write_value(&mut out, &to_mp(self));
        out
    }

    /// Decodes msgpack. Any extension is an unknown; code 12 carries refinements.
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut rd = bytes;
        let mp = rmpv::decode::read_value(&mut rd).map_err(|e| DecodeError::Msgpack(e.to_string()))?;
        if !rd.is_empty() {
            return Err(DecodeError::Msgpack(format!("{} trailing bytes", rd.len())));
        }
        from_mp(mp)
    }

    /// Converts JSON (state as Terraform stores it). JSON cannot carry unknowns.
    pub fn from_json(json: &serde_json::Value) -> Self {
        match json {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => Value::Number(if let Some(i) = n.as_i64() {
                Number::Int(i)
            } else if let Some(u) = n.as_u64() {
                Number::UInt(u)
            } else {
                n.as_f64()
                    .map_or_else(|| Number::Text(n.to_string()), Number::Float)
            }),
            serde_json::Value::String(s) => Value::String(s.clone()),
            serde_json::Value::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(o) => {
                Value::Map(o.iter().map(|(k, v)| (k.clone(), Value::from_json(v))).collect())
            }
        }
    }
}

fn to_mp(v: &Value) -> Mp {
    match v {
        Value::Null => Mp::Nil,
        Value::Unknown(r) if r.is_empty() => Mp::Ext(UNKNOWN_EXT, vec![0]),
        Value::Unknown(r) => {
            let mut payload = Vec::new();
            let _ = rmpv::encode::write_value(&mut payload, &refinements_to_mp(r));
            Mp::Ext(REFINED_UNKNOWN_EXT, payload)
        }
        Value::Bool(b) => Mp::Boolean(*b),
        Value::Number(n) => number_to_mp(n),
        Value::String(s) => Mp::String(s.as_str().into()),
        Value::List(items) => Mp::Array(items.iter().map(to_mp).collect()),
        Value::Map(m) => Mp::Map(
            m.iter()
                .map(|(k, v)| (Mp::String(k.as_str().into()), to_mp(v)))
                .collect(),
        ),
    }
}

fn number_to_mp(n: &Number) -> Mp {
    match n {
        Number::Int(i) => Mp::from(*i),
        Number::UInt(u) => Mp::from(*u),
        Number::Float(f) => Mp::F64(*f),
        Number::Text(s) => Mp::String(s.as_str().into()),
    }
}

fn refinements_to_mp(r: &Refinements) -> Mp {
    let mut m = Vec::new();
    if let Some(b) = r.nullness {
        m.push((Mp::from(1), Mp::Boolean(b)));
    }
    if let Some(p) = &r.string_prefix {
        m.push((Mp::from(2), Mp::String(p.as_str().into())));
    }
    if let Some((n, inc)) = &r.number_lower {
        m.push((Mp::from(3), Mp::Array(vec![number_to_mp(n), Mp::Boolean(*inc)])));
    }
    if let Some((n, inc)) = &r.number_upper {
        m.push((Mp::from(4), Mp::Array(vec![number_to_mp(n), Mp::Boolean(*inc)])));
    }
    if let Some(l) = r.length_min {
        m.push((Mp::from(5), Mp::from(l)));
    }
    if let Some(l) = r.length_max {
        m.push((Mp::from(6), Mp::from(l)));
    }
    Mp::Map(m)
}

fn number_from_mp(mp: &Mp) -> Option<Number> {
    match mp {
        Mp::Integer(i) => Some(match i.as_i64() {
            Some(i) => Number::Int(i),
            None => Number::UInt(i.as_u64()?),
        }),
        Mp::F32(f) => Some(Number::Float(f64::from(*f))),
        Mp::F64(f) => Some(Number::Float(*f)),
        Mp::String(s) => s.as_str().map(|s| Number::Text(s.to_string())),
        _ => None,
    }
}

/// Reads a refinement payload. Unknown keys and malformed entries are ignored: refinements are hints.
fn refinements_from_payload(payload: &[u8]) -> Refinements {
    let mut r = Refinements::default();
    let mut rd = payload;
    let Ok(Mp::Map(entries)) = rmpv::decode::read_value(&mut rd) else {
        return r;
    };
    let bound = |v: &Mp| match v {
        Mp::Array(a) if a.len() == 2 => Some((number_from_mp(&a[0])?, a[1].as_bool()?)),
        _ => None,
    };
    for (k, v) in entries {
        match k.as_i64() {
            Some(1) => r.nullness = v.as_bool(),
            Some(2) => r.string_prefix = v.as_str().map(str::to_string),
            Some(3) => r.number_lower = bound(&v),
            Some(4) => r.number_upper = bound(&v),
            Some(5) => r.length_min = v.as_i64(),
            Some(6) => r.length_max = v.as_i64(),
            _ => {}
        }
    }
    r
}

fn from_mp(mp: Mp) -> Result<Value, DecodeError> {
    Ok(match mp {
        Mp::Nil => Value::Null,
        Mp::Boolean(b) => Value::Bool(b),
        Mp::Integer(_) | Mp::F32(_) | Mp::F64(_) => {
            Value::Number(number_from_mp(&mp).ok_or_else(|| DecodeError::Unexpected(format!("{mp}")))?)
        }
        Mp::String(s) => match s.into_str() {
            Some(s) => Value::String(s),
            None => return Err(DecodeError::Unexpected("string that is not UTF-8".into())),
        },
        Mp::Binary(_) => {
            return Err(DecodeError::Unexpected(
                "binary (dynamic-typed values are not used by this provider)".into(),
            ));
        }
        Mp::Array(items) => Value::List(items.into_iter().map(from_mp).collect::<Result<_, _>>()?),
        Mp::Map(entries) => {
            let mut m = BTreeMap::new();
            for (k, v) in entries {
                let Mp::String(k) = k else {
                    return Err(DecodeError::Unexpected(format!("map key {k}")));
                };
                let Some(k) = k.into_str() else {
                    return Err(DecodeError::Unexpected("map key that is not UTF-8".into()));
                };
                m.insert(k, from_mp(v)?);
            }
            Value::Map(m)
        }
        Mp::Ext(REFINED_UNKNOWN_EXT, payload) => Value::Unknown(refinements_from_payload(&payload)),
        Mp::Ext(_, _) => Value::Unknown(Refinements::default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unknown_is_ctys_fixext1() {
        assert_eq!(Value::unknown().to_msgpack(), vec![0xd4, 0x00, 0x00]);
        assert_eq!(Value::Null.to_msgpack(), vec![0xc0]);
    }

    #[test]
    fn any_extension_decodes_as_unknown() {
        // fixext1 with type 5 and an arbitrary payload.
        let v = Value::from_msgpack(&[0xd4, 0x05, 0x2a]).expect("decodes");
        assert_eq!(v, Value::unknown());
    }

    #[test]
    fn refined_unknown_reads_known_keys_and_ignores_others() {
        // {1: false, 2: "10.", 99: "future"}
        let mut payload = Vec::new();
        let map = Mp::Map(vec![
            (Mp::from(1), Mp::Boolean(false)),
            (Mp::from(2), Mp::from("10.")),
            (Mp::from(99), Mp::from("future")),
        ]);
        rmpv::encode::write_value(&mut payload, &map).expect("encode");
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &Mp::Ext(12, payload)).expect("encode");
        let v = Value::from_msgpack(&bytes).expect("decodes");
        let Value::Unknown(r) = v else {
            panic!("expected unknown, got {v:?}")
        };
        assert_eq!(r.nullness, Some(false));
        assert_eq!(r.string_prefix.as_deref(), Some("10."));
        assert_eq!(r.number_lower, None);
    }

    #[test]
    fn numbers_arrive_as_int_float_or_string() {
        let int = Value::from_msgpack(&Value::Number(Number::Int(30)).to_msgpack()).expect("int");
        assert_eq!(int.as_i64(), Some(30));
        let float = Value::from_msgpack(&Value::Number(Number::Float(30.0)).to_msgpack()).expect("float");
        assert_eq!(float.as_i64(), Some(30));
        let text = Value::from_msgpack(&Value::str("30").to_msgpack()).expect("text");
        // A string stays a string until the schema says it is a number; the number view parses it.
        assert_eq!(Number::Text("30".into()).as_i64(), Some(30));
        assert_eq!(text.as_str(), Some("30"));
        assert_eq!(Number::Float(28.5).as_i64(), None);
        assert_eq!(Number::Text("1e400".into()).as_i64(), None);
    }

    #[test]
    fn trailing_bytes_and_garbage_are_errors() {
        assert!(Value::from_msgpack(&[0xc0, 0xc0]).is_err());
        assert!(Value::from_msgpack(&[0x92, 0x01]).is_err(), "truncated array");
        assert!(Value::from_msgpack(&[]).is_err());
    }

    fn number() -> impl Strategy<Value = Number> {
        prop_oneof![
            any::<i64>().prop_map(Number::Int),
            ((i64::MAX as u64 + 1)..=u64::MAX).prop_map(Number::UInt),
            any::<f64>()
                .prop_filter("NaN never equals itself", |f| !f.is_nan())
                .prop_map(Number::Float),
            "-?[0-9]{20,40}(\\.[0-9]{1,5})?".prop_map(Number::Text),
        ]
    }

    fn refinements() -> impl Strategy<Value = Refinements> {
        (
            proptest::option::of(any::<bool>()),
            proptest::option::of("[a-z0-9./]{0,8}"),
            proptest::option::of((number(), any::<bool>())),
            proptest::option::of((number(), any::<bool>())),
            proptest::option::of(0i64..100),
            proptest::option::of(0i64..100),
        )
            .prop_map(
                |(nullness, string_prefix, number_lower, number_upper, length_min, length_max)| Refinements {
                    nullness,
                    string_prefix,
                    number_lower,
                    number_upper,
                    length_min,
                    length_max,
                },
            )
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            refinements().prop_map(Value::Unknown),
            any::<bool>().prop_map(Value::Bool),
            number()
                .prop_filter("a numeric string decodes as a string", |n| !matches!(
                    n,
                    Number::Text(_)
                ))
                .prop_map(Value::Number),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
                proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..6).prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        #[test]
        fn msgpack_round_trip(v in value()) {
            let bytes = v.to_msgpack();
            prop_assert_eq!(Value::from_msgpack(&bytes).expect("own encoding decodes"), v);
        }

        #[test]
        fn numbers_keep_their_value(n in number()) {
            let bytes = Value::Number(n.clone()).to_msgpack();
            let back = Value::from_msgpack(&bytes).expect("decodes");
            match n {
                Number::Text(s) => prop_assert_eq!(back, Value::String(s)),
                other => prop_assert_eq!(back, Value::Number(other)),
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Value::from_msgpack(&bytes);
        }
    }
}
