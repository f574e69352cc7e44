//! The `openai` dialect: requests go as the caller wrote them, with the target's model and the
//! stream fields of the call; answers are read as they come, and error bodies are classified
//! ([`classify_openai_error`]).

use bytes::Bytes;
use serde_json::Value;

use super::{Answer, classify_openai_error};

/// A whole answer: 2xx as it is (its usage is read by the engine); an error body classified.
pub fn answer(status: u16, body: Bytes) -> Answer {
    let mut a = Answer::untouched(status, body);
    if !(200..300).contains(&status) {
        a.error = classify_openai_error(status, &a.body);
    }
    a
}

/// The request body sent to a target: the caller's body with the target's model and the stream
/// fields this call needs.
///
/// Written straight from the caller's body with the changes applied on the way (no copy of the
/// body is made): fields keep their place, `model` is replaced where it stands, `stream` and
/// `stream_options` are set or left out, and fields the body lacks come last.
pub fn body(
    body: &Value,
    model: Option<&str>,
    stream: bool,
    stream_usage: bool,
) -> Result<Bytes, serde_json::Error> {
    let mut out = Vec::with_capacity(512);
    match body {
        Value::Object(map) => serde_json::to_writer(
            &mut out,
            &Patched {
                map,
                model,
                stream,
                stream_usage,
            },
        )?,
        other => serde_json::to_writer(&mut out, other)?,
    }
    Ok(Bytes::from(out))
}

/// A request body with the call's changes, serialised without copying it.
struct Patched<'a> {
    map: &'a serde_json::Map<String, Value>,
    model: Option<&'a str>,
    stream: bool,
    stream_usage: bool,
}

/// `stream_options` with `include_usage: true` merged in.
struct WithUsage<'a>(Option<&'a Value>);

impl serde::Serialize for WithUsage<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        if let Some(Value::Object(o)) = self.0 {
            for (k, v) in o {
                if k != "include_usage" {
                    m.serialize_entry(k, v)?;
                } else {
                    m.serialize_entry(k, &true)?;
                }
            }
            if !o.contains_key("include_usage") {
                m.serialize_entry("include_usage", &true)?;
            }
        } else {
            m.serialize_entry("include_usage", &true)?;
        }
        m.end()
    }
}

impl serde::Serialize for Patched<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        for (k, v) in self.map {
            match k.as_str() {
                "model" if self.model.is_some() => m.serialize_entry(k, &self.model)?,
                "stream" if self.stream => m.serialize_entry(k, &true)?,
                "stream_options" if self.stream && self.stream_usage => {
                    m.serialize_entry(k, &WithUsage(Some(v)))?
                }
                "stream" | "stream_options" if !self.stream => {}
                _ => m.serialize_entry(k, v)?,
            }
        }
        if let Some(model) = self.model
            && !self.map.contains_key("model")
        {
            m.serialize_entry("model", model)?;
        }
        if self.stream {
            if !self.map.contains_key("stream") {
                m.serialize_entry("stream", &true)?;
            }
            if self.stream_usage && !self.map.contains_key("stream_options") {
                m.serialize_entry("stream_options", &WithUsage(None))?;
            }
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::body as body_for;
    use serde_json::{Value, json};

    fn sent(body: &Value, model: Option<&str>, stream: bool, usage: bool) -> Value {
        serde_json::from_slice(&body_for(body, model, stream, usage).expect("serialises"))
            .expect("the body sent is JSON")
    }

    #[test]
    fn plain_calls_drop_the_stream_fields_and_keep_the_rest() {
        let body = json!({"model": "a", "messages": [{"role": "user", "content": "hi"}],
                          "stream": true, "stream_options": {"include_usage": true},
                          "temperature": 0.2});
        assert_eq!(
            sent(&body, None, false, true),
            json!({"model": "a", "messages": [{"role": "user", "content": "hi"}],
                   "temperature": 0.2})
        );
    }

    #[test]
    fn the_target_model_replaces_the_callers_or_is_added() {
        let body = json!({"model": "a", "messages": []});
        assert_eq!(
            sent(&body, Some("b"), false, false),
            json!({"model": "b", "messages": []})
        );
        let body = json!({"messages": []});
        assert_eq!(
            sent(&body, Some("b"), false, false),
            json!({"model": "b", "messages": []})
        );
    }

    #[test]
    fn streams_ask_for_usage_merging_the_callers_options() {
        let body = json!({"messages": []});
        assert_eq!(
            sent(&body, None, true, true),
            json!({"messages": [], "stream": true, "stream_options": {"include_usage": true}})
        );
        let body = json!({"messages": [], "stream": false,
                          "stream_options": {"include_usage": false, "other": 1}});
        assert_eq!(
            sent(&body, None, true, true),
            json!({"messages": [], "stream": true,
                   "stream_options": {"include_usage": true, "other": 1}})
        );
        let body = json!({"messages": [], "stream_options": "odd"});
        assert_eq!(
            sent(&body, None, true, true)["stream_options"],
            json!({"include_usage": true})
        );
        // An upstream with stream_usage = false: the caller's options are left as they are.
        let body = json!({"messages": [], "stream_options": {"x": 1}});
        assert_eq!(
            sent(&body, None, true, false),
            json!({"messages": [], "stream": true, "stream_options": {"x": 1}})
        );
    }

    #[test]
    fn each_field_once() {
        let body = json!({"model": "a", "stream": false, "messages": []});
        let text =
            String::from_utf8(body_for(&body, Some("b"), true, true).unwrap().to_vec()).unwrap();
        assert_eq!(text.matches("\"model\"").count(), 1);
        assert_eq!(text.matches("\"stream\"").count(), 1);
        assert!(text.contains("\"model\":\"b\""), "{text}");
    }

    #[test]
    fn a_body_that_is_not_an_object_is_sent_as_it_is() {
        assert_eq!(sent(&json!([1, 2]), Some("b"), true, true), json!([1, 2]));
    }
}
