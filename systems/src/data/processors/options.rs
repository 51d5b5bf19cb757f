//! Option parsing shared by the processors: serde structs with `deny_unknown_fields`, plus the option types
//! several processors take (sizes, value ranges), each with a message that names its key.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// Parses a processor's options (`{}` when none were given). Unknown keys fail with serde's "unknown field
/// `x`, expected one of ..." (the valid options); a value of the wrong type fails with its key named, which
/// serde_json's own message does not do.
pub fn parse<T: DeserializeOwned>(options: &Value) -> Result<T, String> {
    let options = if options.is_null() { Value::Object(Default::default()) } else { options.clone() };
    let Value::Object(map) = &options else {
        return Err(format!("options must be a map of keys, got {options}"));
    };
    parse_map(map, |key, m| format!("option `{key}`: {m}"))
}

/// Parses `map` as `T`. Unknown and missing fields keep serde's message (which lists the valid keys); a wrong
/// value's message is `named(key, serde's message)` for the key at fault ([`culprit`]).
pub fn parse_map<T: DeserializeOwned>(
    map: &serde_json::Map<String, Value>,
    named: impl Fn(&str, &str) -> String,
) -> Result<T, String> {
    serde_json::from_value::<T>(Value::Object(map.clone())).map_err(|e| {
        let msg = e.to_string();
        if msg.starts_with("unknown field") || msg.starts_with("missing field") {
            return msg;
        }
        match culprit::<T>(map) {
            Some((key, m)) => named(&key, &m),
            None => msg,
        }
    })
}

/// The key of `map` whose value alone fails to parse as `T` for a reason other than a missing field, with
/// that failure: serde_json's messages for a wrong value do not name the key, so the caller adds it.
pub fn culprit<T: DeserializeOwned>(map: &serde_json::Map<String, Value>) -> Option<(String, String)> {
    map.iter().find_map(|(key, value)| {
        let alone = Value::Object([(key.clone(), value.clone())].into_iter().collect());
        let m = serde_json::from_value::<T>(alone).err()?.to_string();
        (!m.starts_with("missing field")).then(|| (key.clone(), m))
    })
}

/// An output size: one number (its meaning depends on the processor: the smaller edge for `resize`, a square
/// for the crops) or `[height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Value")]
pub enum Size {
    /// One number.
    One(usize),
    /// `[height, width]`.
    Hw(usize, usize),
}

impl TryFrom<Value> for Size {
    type Error = String;
    fn try_from(v: Value) -> Result<Size, String> {
        let positive = |v: &Value| v.as_u64().filter(|&n| n > 0).map(|n| n as usize);
        let bad = || format!("must be a positive integer or [height, width] of positive integers, got {v}");
        match &v {
            Value::Array(a) if a.len() == 1 => positive(&a[0]).map(Size::One).ok_or_else(bad),
            Value::Array(a) if a.len() == 2 => match (positive(&a[0]), positive(&a[1])) {
                (Some(h), Some(w)) => Ok(Size::Hw(h, w)),
                _ => Err(bad()),
            },
            other => positive(other).map(Size::One).ok_or_else(bad),
        }
    }
}

impl Size {
    /// `(height, width)`, a single number meaning a square.
    pub fn square_or_hw(self) -> (usize, usize) {
        match self {
            Size::One(s) => (s, s),
            Size::Hw(h, w) => (h, w),
        }
    }
}

/// A number or a `[min, max]` pair, as torchvision's ColorJitter and RandomResizedCrop take them.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(try_from = "Value")]
pub enum NumberOrRange {
    /// One number.
    One(f64),
    /// `[min, max]`.
    Range([f64; 2]),
}

impl TryFrom<Value> for NumberOrRange {
    type Error = String;
    fn try_from(v: Value) -> Result<NumberOrRange, String> {
        let bad = || format!("must be a number or a [min, max] pair of numbers, got {v}");
        match &v {
            Value::Number(n) => n.as_f64().map(NumberOrRange::One).ok_or_else(bad),
            Value::Array(a) if a.len() == 2 => match (a[0].as_f64(), a[1].as_f64()) {
                (Some(lo), Some(hi)) => Ok(NumberOrRange::Range([lo, hi])),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

/// Per-channel values (`normalize`'s mean and std): one number for every channel or a list, one per channel.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "Value")]
pub struct PerChannel(pub Vec<f32>);

impl TryFrom<Value> for PerChannel {
    type Error = String;
    fn try_from(v: Value) -> Result<PerChannel, String> {
        let bad = || format!("must be a number or a non-empty list of numbers (one per channel), got {v}");
        match &v {
            Value::Number(n) => Ok(PerChannel(vec![n.as_f64().ok_or_else(bad)? as f32])),
            Value::Array(a) if !a.is_empty() => {
                a.iter().map(|x| x.as_f64().map(|f| f as f32).ok_or_else(bad)).collect::<Result<_, _>>().map(PerChannel)
            }
            _ => Err(bad()),
        }
    }
}

/// Reads a `[min, max]` option: both finite and `min <= max`.
pub fn ordered_pair(key: &str, v: [f64; 2]) -> Result<(f64, f64), String> {
    if !(v[0].is_finite() && v[1].is_finite() && v[0] <= v[1]) {
        return Err(format!("`{key}` must be [min, max] with finite min <= max, got [{}, {}]", v[0], v[1]));
    }
    Ok((v[0], v[1]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Opts {
        size: Size,
        #[serde(default)]
        p: f64,
    }

    #[test]
    fn sizes_and_messages_name_the_key() {
        let o: Opts = parse(&json!({"size": 4})).unwrap();
        assert_eq!(o.size, Size::One(4));
        let o: Opts = parse(&json!({"size": [3, 5]})).unwrap();
        assert_eq!(o.size.square_or_hw(), (3, 5));
        assert_eq!(parse::<Opts>(&json!({"size": [7]})).unwrap().size, Size::One(7));
        let e = parse::<Opts>(&json!({"size": 0})).err().unwrap();
        assert!(e.contains("option `size`") && e.contains("positive"), "{e}");
        let e = parse::<Opts>(&json!({"size": 3, "q": 1})).err().unwrap();
        assert!(e.contains("unknown field `q`") && e.contains("`size`") && e.contains("`p`"), "{e}");
        let e = parse::<Opts>(&json!({"size": 3, "p": "half"})).err().unwrap();
        assert!(e.contains("option `p`") && e.contains("invalid type"), "{e}");
        let e = parse::<Opts>(&json!({})).err().unwrap();
        assert!(e.contains("missing field `size`"), "{e}");
        assert!(parse::<Opts>(&json!([1])).err().unwrap().contains("map"));
    }
}
