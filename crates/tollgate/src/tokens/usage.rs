//! Reconciling reservations with the usage a provider reports.

use serde_json::{Map, Value};

use super::error::json_type;
use super::{ModelTable, TokenError, count_text};

/// Tokens a call actually consumed, as reported by the provider (or counted from a stream).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Completion tokens, reasoning tokens included.
    pub completion_tokens: u64,
    /// Total tokens as reported (prompt + completion when not reported).
    pub total_tokens: u64,
    /// Prompt tokens served from the provider's prompt cache (part of `prompt_tokens`).
    pub cached_prompt_tokens: u64,
    /// Hidden reasoning tokens (part of `completion_tokens`).
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Reads the usage of a response body (its `usage` field) or of a usage object itself.
    ///
    /// Understands OpenAI chat completions (`prompt_tokens`, `completion_tokens`,
    /// `prompt_tokens_details.cached_tokens`, `completion_tokens_details.reasoning_tokens`),
    /// the OpenAI Responses API (`input_tokens`, `output_tokens`, `input_tokens_details`,
    /// `output_tokens_details`) and DeepSeek (`prompt_cache_hit_tokens`). `total_tokens`
    /// defaults to prompt + completion.
    ///
    /// Returns `Ok(None)` when there is no usage (a streamed chunk without it, `"usage": null`).
    /// Returns an error naming the field when a count is negative, fractional or not a number,
    /// or when a part exceeds its whole (cached > prompt, reasoning > completion).
    ///
    /// ```
    /// use serde_json::json;
    /// use tollgate::tokens::Usage;
    /// let body = json!({"usage": {
    ///     "prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
    ///     "prompt_tokens_details": {"cached_tokens": 1024},
    ///     "completion_tokens_details": {"reasoning_tokens": 256}
    /// }});
    /// let u = Usage::from_response(&body).unwrap().unwrap();
    /// assert_eq!((u.prompt_tokens, u.cached_prompt_tokens, u.reasoning_tokens), (1200, 1024, 256));
    /// assert_eq!(Usage::from_response(&json!({"choices": []})).unwrap(), None);
    /// ```
    pub fn from_response(body: &Value) -> Result<Option<Usage>, TokenError> {
        let usage = match body {
            Value::Object(obj) => match obj.get("usage") {
                Some(Value::Null) => return Ok(None),
                Some(u) => u,
                None if is_usage_object(obj) => body,
                None => return Ok(None),
            },
            Value::Null => return Ok(None),
            other => {
                return Err(TokenError::UsageNotObject {
                    found: json_type(other),
                });
            }
        };
        let u = usage.as_object().ok_or(TokenError::UsageNotObject {
            found: json_type(usage),
        })?;
        // Read in the order the names take precedence: a name that another one shadows is not
        // looked at (so a malformed value there is no error).
        let details = |outer: &str, inner: &str, path: &'static str| {
            nested(u, outer, inner, path).map(|v| Some(Details::of(v, inner)))
        };
        let mut f = Fields {
            prompt_tokens: field(u, "prompt_tokens")?,
            ..Fields::default()
        };
        if f.prompt_tokens.is_none() {
            f.input_tokens = field(u, "input_tokens")?;
        }
        f.completion_tokens = field(u, "completion_tokens")?;
        if f.completion_tokens.is_none() {
            f.output_tokens = field(u, "output_tokens")?;
        }
        f.prompt_tokens_details = details(
            "prompt_tokens_details",
            "cached_tokens",
            "prompt_tokens_details.cached_tokens",
        )?;
        if f.cached().is_none() {
            f.input_tokens_details = details(
                "input_tokens_details",
                "cached_tokens",
                "input_tokens_details.cached_tokens",
            )?;
        }
        if f.cached().is_none() {
            f.prompt_cache_hit_tokens = field(u, "prompt_cache_hit_tokens")?;
        }
        f.completion_tokens_details = details(
            "completion_tokens_details",
            "reasoning_tokens",
            "completion_tokens_details.reasoning_tokens",
        )?;
        if f.reasoning().is_none() {
            f.output_tokens_details = details(
                "output_tokens_details",
                "reasoning_tokens",
                "output_tokens_details.reasoning_tokens",
            )?;
        }
        f.usage(|| field(u, "total_tokens"))
    }

    /// Reads the `usage` of a response body given as bytes, as [`Usage::from_response`] reads
    /// it from the parsed body, without building the body or the usage as a [`Value`]: the
    /// counts go straight into integers. A usage it cannot read that way (a count of the wrong
    /// type, for one) is read again through [`Usage::from_response`], so the answer and the
    /// error are the same. `Err` only when the body is not JSON.
    pub fn from_response_bytes(body: &[u8]) -> Result<Option<Usage>, serde_json::Error> {
        #[derive(serde::Deserialize)]
        struct Fast {
            #[serde(default, deserialize_with = "object_or_null")]
            usage: Option<Fields>,
        }
        #[derive(serde::Deserialize)]
        struct Slow {
            #[serde(default)]
            usage: Option<Value>,
        }
        match serde_json::from_slice::<Fast>(body) {
            Ok(Fast { usage: None }) => Ok(None),
            Ok(Fast { usage: Some(f) }) if f.names_a_count() => {
                Ok(f.usage(|| Ok(f.total_tokens)).ok().flatten())
            }
            // No count under any name (or only nulls): the slow path tells which.
            Ok(Fast { usage: Some(_) }) | Err(_) => {
                let slow: Slow = serde_json::from_slice(body)?;
                Ok(slow
                    .usage
                    .and_then(|u| Usage::from_response(&u).ok().flatten()))
            }
        }
    }

    /// Usage of a streamed response that ended without a usage chunk: the prompt as estimated
    /// at admission, and the streamed text counted for `model` (exactly when its encoding is
    /// known). Nothing is known to be cached or reasoning.
    ///
    /// ```
    /// use tollgate::tokens::{ModelTable, Usage};
    /// let u = Usage::from_streamed("gpt-4o", ModelTable::bundled(), 120, "hello world");
    /// assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (120, 2, 122));
    /// ```
    pub fn from_streamed(
        model: &str,
        table: &ModelTable,
        prompt_estimate: u64,
        streamed_text: &str,
    ) -> Usage {
        let completion_tokens = count_text(table, model, streamed_text).tokens;
        Usage {
            prompt_tokens: prompt_estimate,
            completion_tokens,
            total_tokens: prompt_estimate.saturating_add(completion_tokens),
            cached_prompt_tokens: 0,
            reasoning_tokens: 0,
        }
    }

    /// Prompt tokens that were not served from cache.
    pub fn uncached_prompt_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_sub(self.cached_prompt_tokens)
    }
}

/// The counts a usage object may hold, under every provider's names (`None`: absent or null).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct Fields {
    prompt_tokens: Option<u64>,
    input_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    output_tokens: Option<u64>,
    total_tokens: Option<u64>,
    prompt_cache_hit_tokens: Option<u64>,
    #[serde(deserialize_with = "object_or_null")]
    prompt_tokens_details: Option<Details>,
    #[serde(deserialize_with = "object_or_null")]
    input_tokens_details: Option<Details>,
    #[serde(deserialize_with = "object_or_null")]
    completion_tokens_details: Option<Details>,
    #[serde(deserialize_with = "object_or_null")]
    output_tokens_details: Option<Details>,
}

/// A `*_tokens_details` object: the part it names.
#[derive(Debug, Default, Clone, Copy, serde::Deserialize)]
#[serde(default)]
struct Details {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

impl Details {
    /// Details holding `inner` = `v`.
    fn of(v: Option<u64>, inner: &str) -> Details {
        match inner {
            "cached_tokens" => Details {
                cached_tokens: v,
                ..Details::default()
            },
            _ => Details {
                reasoning_tokens: v,
                ..Details::default()
            },
        }
    }
}

impl Fields {
    /// Whether it names a count at all (else it is not a usage object).
    fn names_a_count(&self) -> bool {
        [
            self.prompt_tokens,
            self.completion_tokens,
            self.input_tokens,
            self.output_tokens,
            self.total_tokens,
        ]
        .iter()
        .any(Option::is_some)
    }

    /// The cached part of the prompt and the name it came under, in precedence order.
    fn cached(&self) -> Option<(u64, &'static str)> {
        let part = |d: Option<Details>| d.and_then(|d| d.cached_tokens);
        if let Some(v) = part(self.prompt_tokens_details) {
            Some((v, "prompt_tokens_details.cached_tokens"))
        } else if let Some(v) = part(self.input_tokens_details) {
            Some((v, "input_tokens_details.cached_tokens"))
        } else {
            self.prompt_cache_hit_tokens
                .map(|v| (v, "prompt_cache_hit_tokens"))
        }
    }

    /// The reasoning part of the completion and the name it came under.
    fn reasoning(&self) -> Option<(u64, &'static str)> {
        let part = |d: Option<Details>| d.and_then(|d| d.reasoning_tokens);
        if let Some(v) = part(self.completion_tokens_details) {
            Some((v, "completion_tokens_details.reasoning_tokens"))
        } else {
            part(self.output_tokens_details).map(|v| (v, "output_tokens_details.reasoning_tokens"))
        }
    }

    /// The usage these counts say, checked (a part never exceeds its whole); `total` reads the
    /// reported total, after the parts are checked.
    fn usage(
        &self,
        total: impl FnOnce() -> Result<Option<u64>, TokenError>,
    ) -> Result<Option<Usage>, TokenError> {
        let (prompt_tokens, prompt_field) = match self.prompt_tokens {
            Some(v) => (v, "prompt_tokens"),
            None => (self.input_tokens.unwrap_or(0), "input_tokens"),
        };
        let (completion_tokens, completion_field) = match self.completion_tokens {
            Some(v) => (v, "completion_tokens"),
            None => (self.output_tokens.unwrap_or(0), "output_tokens"),
        };
        let cached = self
            .cached()
            .unwrap_or((0, "prompt_tokens_details.cached_tokens"));
        let reasoning = self
            .reasoning()
            .unwrap_or((0, "completion_tokens_details.reasoning_tokens"));
        check_part(cached, (prompt_tokens, prompt_field))?;
        check_part(reasoning, (completion_tokens, completion_field))?;
        Ok(Some(Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: total()?.unwrap_or(prompt_tokens.saturating_add(completion_tokens)),
            cached_prompt_tokens: cached.0,
            reasoning_tokens: reasoning.0,
        }))
    }
}

/// A struct from an object only (derived struct deserializers also take arrays), `None` for
/// null.
fn object_or_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    use serde::de::value::MapAccessDeserializer;
    struct Visit<T>(std::marker::PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object or null")
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_option(Visit(std::marker::PhantomData))
}

fn is_usage_object(obj: &Map<String, Value>) -> bool {
    [
        "prompt_tokens",
        "completion_tokens",
        "input_tokens",
        "output_tokens",
        "total_tokens",
    ]
    .iter()
    .any(|k| obj.contains_key(*k))
}

fn field(u: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, TokenError> {
    parse_count(u.get(name), name)
}

fn nested(
    u: &Map<String, Value>,
    outer: &str,
    inner: &str,
    path: &'static str,
) -> Result<Option<u64>, TokenError> {
    match u.get(outer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => parse_count(o.get(inner), path),
        Some(other) => Err(TokenError::InvalidUsageField {
            field: path,
            value: other.to_string(),
        }),
    }
}

fn parse_count(v: Option<&Value>, name: &'static str) -> Result<Option<u64>, TokenError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) => Ok(Some(n)),
            None => Err(TokenError::InvalidUsageField {
                field: name,
                value: v.to_string(),
            }),
        },
    }
}

fn check_part(part: (u64, &'static str), whole: (u64, &'static str)) -> Result<(), TokenError> {
    if part.0 > whole.0 {
        return Err(TokenError::InconsistentUsage {
            field: part.1,
            part: part.0,
            total_field: whole.1,
            total: whole.0,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The byte path answers what `from_response` answers for the body's `usage`, case by case.
    #[test]
    fn bytes_read_the_same_usage_as_values() {
        let usages = [
            r#"{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29}"#,
            r#"{"prompt_tokens":1200,"completion_tokens":300,"total_tokens":1500,
                "prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},
                "completion_tokens_details":{"reasoning_tokens":256}}"#,
            r#"{"input_tokens":5,"output_tokens":7,"input_tokens_details":{"cached_tokens":2},
                "output_tokens_details":{"reasoning_tokens":3}}"#,
            r#"{"prompt_tokens":50,"completion_tokens":5,"prompt_cache_hit_tokens":40}"#,
            r#"{"prompt_tokens":50,"completion_tokens":5,"prompt_tokens_details":{}}"#,
            r#"{"prompt_tokens":50,"completion_tokens":5,"prompt_tokens_details":null}"#,
            r#"{"completion_tokens":5}"#,
            r#"{"total_tokens":5}"#,
            "{}",
            "null",
            r#"{"prompt_tokens":null}"#,
            r#"{"prompt_tokens":"19","completion_tokens":1}"#,
            r#"{"prompt_tokens":-1,"completion_tokens":1}"#,
            r#"{"prompt_tokens":1.5,"completion_tokens":1}"#,
            r#"{"prompt_tokens":10,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":11}}"#,
            r#"{"prompt_tokens":10,"completion_tokens":1,"completion_tokens_details":{"reasoning_tokens":2}}"#,
            r#"{"prompt_tokens":10,"completion_tokens":1,"prompt_tokens_details":7}"#,
            r#"{"prompt_tokens":10,"completion_tokens":1,"prompt_tokens_details":[5]}"#,
            // A shadowed name holding nonsense is not read (prompt_tokens wins).
            r#"{"prompt_tokens":10,"input_tokens":"x","completion_tokens":1}"#,
            r#"{"prompt_tokens":10,"completion_tokens":1,"total_tokens":"many"}"#,
            "[1,2]",
            r#""text""#,
        ];
        for usage in usages {
            let body = format!(
                r#"{{"id":"x","choices":[{{"message":{{"content":"hi"}}}}],"usage":{usage}}}"#
            );
            let value: Value = serde_json::from_str(usage).unwrap();
            let expected = match value {
                Value::Null => None,
                v => Usage::from_response(&v).ok().flatten(),
            };
            let got = Usage::from_response_bytes(body.as_bytes()).expect("the body is JSON");
            assert_eq!(got, expected, "usage {usage}");
        }
        assert_eq!(
            Usage::from_response_bytes(br#"{"choices":[]}"#).unwrap(),
            None
        );
        assert!(Usage::from_response_bytes(b"{not json").is_err());
    }

    #[test]
    fn openai_full_response() {
        let body = json!({"id": "x", "choices": [], "usage": {
            "prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}
        }});
        assert_eq!(
            Usage::from_response(&body),
            Ok(Some(Usage {
                prompt_tokens: 19,
                completion_tokens: 10,
                total_tokens: 29,
                ..Usage::default()
            }))
        );
    }

    #[test]
    fn usage_object_itself_and_total_default() {
        let u = Usage::from_response(&json!({"prompt_tokens": 5, "completion_tokens": 7}))
            .expect("valid")
            .expect("present");
        assert_eq!(u.total_tokens, 12);
    }

    #[test]
    fn deepseek_cache_hits() {
        let u = Usage::from_response(&json!({"usage": {
            "prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
            "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36,
            "completion_tokens_details": {"reasoning_tokens": 15}
        }}))
        .expect("valid")
        .expect("present");
        assert_eq!(
            (
                u.cached_prompt_tokens,
                u.reasoning_tokens,
                u.uncached_prompt_tokens()
            ),
            (64, 15, 36)
        );
    }

    #[test]
    fn responses_api_names() {
        let u = Usage::from_response(&json!({"usage": {
            "input_tokens": 50, "output_tokens": 40, "total_tokens": 90,
            "input_tokens_details": {"cached_tokens": 10},
            "output_tokens_details": {"reasoning_tokens": 30}
        }}))
        .expect("valid")
        .expect("present");
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.cached_prompt_tokens,
                u.reasoning_tokens
            ),
            (50, 40, 10, 30)
        );
    }

    #[test]
    fn absent_usage_is_none() {
        assert_eq!(Usage::from_response(&json!({"choices": []})), Ok(None));
        assert_eq!(Usage::from_response(&json!({"usage": null})), Ok(None));
        assert_eq!(Usage::from_response(&json!(null)), Ok(None));
        assert_eq!(Usage::from_response(&json!({})), Ok(None));
    }

    #[test]
    fn malformed_usage_names_the_field() {
        let cases = [
            (
                json!({"usage": {"prompt_tokens": -1, "completion_tokens": 1}}),
                "prompt_tokens",
            ),
            (
                json!({"usage": {"prompt_tokens": "12", "completion_tokens": 1}}),
                "prompt_tokens",
            ),
            (
                json!({"usage": {"prompt_tokens": 1, "completion_tokens": 1.5}}),
                "completion_tokens",
            ),
            (
                json!({"usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": -2}}),
                "total_tokens",
            ),
            (
                json!({"usage": {"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": "x"}}}),
                "prompt_tokens_details.cached_tokens",
            ),
            (
                json!({"usage": {"prompt_tokens": 1, "prompt_tokens_details": 3}}),
                "prompt_tokens_details.cached_tokens",
            ),
            (
                json!({"usage": {"prompt_tokens": 1, "prompt_cache_hit_tokens": -3}}),
                "prompt_cache_hit_tokens",
            ),
        ];
        for (body, name) in cases {
            let err = Usage::from_response(&body).expect_err("malformed");
            assert!(err.to_string().contains(name), "{err} should name {name}");
        }
    }

    #[test]
    fn parts_cannot_exceed_wholes() {
        let err = Usage::from_response(&json!({"usage": {
            "prompt_tokens": 10, "completion_tokens": 0, "prompt_tokens_details": {"cached_tokens": 11}
        }}))
        .expect_err("cached > prompt");
        assert_eq!(
            err,
            TokenError::InconsistentUsage {
                field: "prompt_tokens_details.cached_tokens",
                part: 11,
                total_field: "prompt_tokens",
                total: 10
            }
        );
        let err = Usage::from_response(&json!({"usage": {
            "prompt_tokens": 1, "completion_tokens": 2, "completion_tokens_details": {"reasoning_tokens": 3}
        }}))
        .expect_err("reasoning > completion");
        assert!(err.to_string().contains("reasoning_tokens"));
    }

    #[test]
    fn non_object_usage_is_an_error() {
        assert_eq!(
            Usage::from_response(&json!({"usage": 5})),
            Err(TokenError::UsageNotObject { found: "a number" })
        );
        assert_eq!(
            Usage::from_response(&json!("usage")),
            Err(TokenError::UsageNotObject { found: "a string" })
        );
    }

    #[test]
    fn streamed_counts_text() {
        let t = ModelTable::bundled();
        let u = Usage::from_streamed("gpt-4o", t, 10, "今天天气很好，我们一起去公园散步吧。");
        assert_eq!((u.completion_tokens, u.total_tokens), (13, 23));
        let e = Usage::from_streamed("mystery", t, 0, "");
        assert_eq!(e, Usage::default());
        let est = Usage::from_streamed("mystery", t, 0, "some streamed words");
        assert!(est.completion_tokens >= 3);
    }
}
