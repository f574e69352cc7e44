//! Conversations over the call API against the testkit upstream: history rebuilt from parent
//! links, trimmed by the exact admission count, refused when the new message alone is too
//! long, streamed with progress, nothing stored on failure, stores that fail, and a
//! conversation continued by a second engine over Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tollgate::Engine;
use tollgate::conversation::{
    Conversation, ConversationError, ConversationOptions, MemoryStore, Message, MessageStore,
    MessageStoreError, SendOptions, StoreFuture,
};
use tollgate::tokens::{ModelTable, count_chat};
use tollgate_testkit::{Action, Match, RedisServer, TestUpstream};

mod common;
use common::rt;

fn engine(up: &TestUpstream, rest: &str) -> Engine {
    Engine::from_text(&format!(
        "version = 1\n[[upstream]]\nname = \"test\"\nbase_url = \"{}\"\n{rest}",
        up.base_url()
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn options(window: Option<u64>) -> ConversationOptions {
    let mut o = ConversationOptions::new("gpt-4o");
    o.system_message = Some("You are terse.".into());
    o.max_model_tokens = window;
    o.max_response_tokens = 8;
    o.tenant = "acme".into();
    o
}

fn after(id: &str) -> SendOptions {
    SendOptions {
        parent_message_id: Some(id.to_owned()),
        ..SendOptions::default()
    }
}

/// The `messages` the upstream received in its `n`-th request.
fn sent(up: &TestUpstream, n: usize) -> Vec<Value> {
    up.log()[n].json().unwrap()["messages"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_conversation_follows_parent_links_and_stores_both_messages() {
    let up = TestUpstream::start().unwrap();
    let store = Arc::new(MemoryStore::default());
    let c = Conversation::new(engine(&up, ""), store.clone(), options(None));
    let rt = rt();
    let first = rt
        .block_on(c.send("hello", SendOptions::default()))
        .unwrap();
    assert_eq!(first.message.role, "assistant");
    assert_eq!(first.message.text.split_whitespace().count(), 8);
    assert_eq!(
        first.message.parent_id.as_deref(),
        Some(first.user_message.id.as_str())
    );
    assert_eq!(store.len(), 2);
    let second = rt
        .block_on(c.send("and then?", after(&first.message.id)))
        .unwrap();
    assert_eq!(
        second.message.conversation_id,
        first.message.conversation_id
    );
    assert_eq!(
        second.user_message.parent_id.as_deref(),
        Some(first.message.id.as_str())
    );
    let third = rt
        .block_on(c.send("last one", after(&second.message.id)))
        .unwrap();
    assert_eq!((third.history_kept, third.history_dropped), (4, 0));
    let roles: Vec<Value> = sent(&up, 2).iter().map(|m| m["role"].clone()).collect();
    assert_eq!(
        roles,
        ["system", "user", "assistant", "user", "assistant", "user"]
    );
    assert_eq!(sent(&up, 2)[3]["content"], "and then?");
    // The count tollgate trimmed by is the one the upstream billed.
    assert_eq!(third.usage.unwrap().prompt_tokens, third.prompt_tokens);
    assert!(third.settlement.is_some());
    assert_eq!(store.len(), 6);
}

#[test]
fn the_history_is_cut_oldest_first_by_the_exact_count() {
    let up = TestUpstream::start().unwrap();
    let store = Arc::new(MemoryStore::default());
    // A small window: the system message, the new message and a few turns.
    let window = 120;
    let c = Conversation::new(engine(&up, ""), store, options(Some(window)));
    let rt = rt();
    let mut parent: Option<String> = None;
    let mut last = None;
    for i in 0..8 {
        let opts = SendOptions {
            parent_message_id: parent.clone(),
            ..SendOptions::default()
        };
        let r = rt
            .block_on(c.send(&format!("question number {i} about the weather"), opts))
            .unwrap();
        parent = Some(r.message.id.clone());
        last = Some(r);
    }
    let last = last.unwrap();
    assert!(last.history_dropped > 0, "the window must cut: {last:?}");
    assert_eq!(last.history_kept + last.history_dropped, 14);
    assert!(last.prompt_tokens <= window - 8);
    // What went out: the system message, the newest turns, the new message; counted as admission
    // counts it, it is the prompt the upstream billed.
    let messages = sent(&up, 7);
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(
        messages.last().unwrap()["content"],
        "question number 7 about the weather"
    );
    assert_eq!(messages.len(), 2 + last.history_kept);
    let counted = count_chat(
        ModelTable::bundled(),
        "gpt-4o",
        &json!({ "messages": messages }),
    )
    .unwrap();
    assert_eq!(counted.prompt_tokens, last.prompt_tokens);
    assert_eq!(last.usage.unwrap().prompt_tokens, last.prompt_tokens);
}

#[test]
fn a_message_that_alone_is_too_long_is_refused_before_sending() {
    let up = TestUpstream::start().unwrap();
    let store = Arc::new(MemoryStore::default());
    let c = Conversation::new(engine(&up, ""), store.clone(), options(Some(100)));
    let err = rt()
        .block_on(c.send(&"word ".repeat(200), SendOptions::default()))
        .unwrap_err();
    assert_eq!(err.code(), "too_long");
    let text = err.to_string();
    assert!(text.contains("92 the window leaves"), "{text}");
    assert!(text.contains("need 2"), "{text}");
    assert_eq!(up.request_count(), 0);
    assert_eq!(store.len(), 0);
    // Bad input: an empty message, an unknown parent, an unknown window.
    let rt = rt();
    assert_eq!(
        rt.block_on(c.send("", SendOptions::default()))
            .unwrap_err()
            .code(),
        "empty"
    );
    let err = rt.block_on(c.send("hi", after("no-such-id"))).unwrap_err();
    assert_eq!(err.code(), "unknown_parent");
    assert!(err.to_string().contains("no-such-id"), "{err}");
    let mut o = options(None);
    o.model = "my-local-model".into();
    let c = Conversation::new(engine(&up, ""), store, o);
    let err = rt
        .block_on(c.send("hi", SendOptions::default()))
        .unwrap_err();
    assert!(matches!(err, ConversationError::UnknownWindow(_)), "{err}");
}

#[test]
fn streams_report_progress_and_a_cut_stream_stores_nothing() {
    let up = TestUpstream::start().unwrap();
    let store = Arc::new(MemoryStore::default());
    let c = Conversation::new(engine(&up, ""), store.clone(), options(None));
    let rt = rt();
    let mut seen = vec![];
    let r = rt
        .block_on(c.send_streaming("stream it", SendOptions::default(), |p| {
            seen.push((p.id.to_owned(), p.text.to_owned()))
        }))
        .unwrap();
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen.iter().all(|(id, _)| *id == r.message.id));
    assert_eq!(seen.last().unwrap().1, r.message.text);
    assert!(r.usage.is_some() && r.settlement.is_some());
    assert_eq!(store.len(), 2);
    up.script(Match::any(), [Action::CutStreamAfter(2)]);
    let err = rt
        .block_on(c.send_streaming("cut me", after(&r.message.id), |_| {}))
        .unwrap_err();
    assert_eq!(err.code(), "stream_cut", "{err}");
    assert_eq!(store.len(), 2, "nothing stored for a failed call");
}

/// A store that fails on demand.
#[derive(Debug, Default)]
struct Flaky {
    inner: MemoryStore,
    broken: AtomicBool,
}

impl MessageStore for Flaky {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Message>> {
        if self.broken.load(Ordering::Relaxed) {
            return Box::pin(async { Err(MessageStoreError("disk on fire".into())) });
        }
        self.inner.get(id)
    }
    fn put<'a>(&'a self, message: &'a Message) -> StoreFuture<'a, ()> {
        if self.broken.load(Ordering::Relaxed) {
            return Box::pin(async { Err(MessageStoreError("disk on fire".into())) });
        }
        self.inner.put(message)
    }
}

#[test]
fn a_failing_store_does_not_fail_the_call() {
    let up = TestUpstream::start().unwrap();
    let store = Arc::new(Flaky::default());
    let c = Conversation::new(engine(&up, ""), store.clone(), options(None));
    let rt = rt();
    let first = rt.block_on(c.send("one", SendOptions::default())).unwrap();
    assert!(first.store_error.is_none());
    store.broken.store(true, Ordering::Relaxed);
    let second = rt
        .block_on(c.send("two", after(&first.message.id)))
        .unwrap();
    let e = second.store_error.expect("the store's error is reported");
    assert!(e.to_string().contains("disk on fire"));
    assert!(!second.message.text.is_empty(), "the call answered");
}

#[test]
fn a_second_engine_continues_the_conversation_over_redis() {
    let server = RedisServer::start().expect("redis-server");
    let up = TestUpstream::start().unwrap();
    let policy = format!(
        "[redis]\nurl = \"{}\"\nkey_prefix = \"conv\"\non_failure = \"fail_closed\"\nop_timeout = \"5s\"\nconnect_timeout = \"10s\"\n",
        server.url()
    );
    let rt = rt();
    let a = engine(&up, &policy);
    let b = engine(&up, &policy);
    let ttl = Duration::from_secs(60);
    let in_a = Conversation::new(
        a.clone(),
        Arc::new(a.redis_message_store(ttl).expect("the policy has [redis]")),
        options(None),
    );
    let in_b = Conversation::new(
        b.clone(),
        Arc::new(b.redis_message_store(ttl).unwrap()),
        options(None),
    );
    let first = rt
        .block_on(in_a.send("remember: blue", SendOptions::default()))
        .unwrap();
    assert!(first.store_error.is_none(), "{:?}", first.store_error);
    let second = rt
        .block_on(in_b.send("what did I say?", after(&first.message.id)))
        .unwrap();
    assert_eq!(
        second.message.conversation_id,
        first.message.conversation_id
    );
    assert_eq!(second.history_kept, 2);
    let messages = sent(&up, 1);
    assert_eq!(messages[1]["content"], "remember: blue");
    assert!(engine(&up, "").redis_message_store(ttl).is_none());
}
