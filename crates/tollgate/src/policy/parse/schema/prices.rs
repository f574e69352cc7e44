//! `[prices]` and `[models]`: what tokens cost, and facts about models tollgate does not know.

use std::collections::BTreeMap;

use crate::policy::ModelOverride;
use crate::policy::parse::read::{Cx, Table, choice, join, number, whole};
use crate::policy::parse::tree::Node;
use crate::tokens::{Encoding, Price};

/// Reads `[prices]`: model name to price per 1M tokens.
pub(super) fn prices(cx: &mut Cx, node: &Node, path: &str) -> Option<BTreeMap<String, Price>> {
    let t = Table::read(
        cx,
        node,
        path,
        "{ \"gpt-4o\" = { input = 2.5, output = 10.0 } }",
    )?;
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (key, value) in t.entries {
        let p = join(path, &key.name);
        match price(cx, value, &p) {
            Some(price) => {
                out.insert(key.name.clone(), price);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn price(cx: &mut Cx, node: &Node, path: &str) -> Option<Price> {
    let t = Table::read(
        cx,
        node,
        path,
        "{ input = 2.5, cached_input = 1.25, output = 10.0 }",
    )?;
    t.check_keys(cx, &["input", "cached_input", "output"]);
    let money = |cx: &mut Cx, n: &Node, p: &str| {
        let v = number(cx, n, p, "a price per 1M tokens of at least 0")?;
        if v < 0.0 {
            cx.err(
                p,
                n.pos,
                format!(
                    "must be 0 or more, got {}; prices cannot be negative",
                    cx.show(n)
                ),
            );
            return None;
        }
        Some(v)
    };
    let input = t.req(cx, "input", "input = 2.5 (per 1M prompt tokens)", money);
    let cached_input = t.maybe(cx, "cached_input", money);
    let output = t.req(
        cx,
        "output",
        "output = 10.0 (per 1M completion tokens)",
        money,
    );
    let input = input?;
    Some(Price {
        input,
        cached_input: cached_input?.unwrap_or(input),
        output: output?,
    })
}

/// Reads `[models]`: model name to its tokenizer and context window.
pub(super) fn models(
    cx: &mut Cx,
    node: &Node,
    path: &str,
) -> Option<BTreeMap<String, ModelOverride>> {
    let t = Table::read(
        cx,
        node,
        path,
        "{ \"my-model\" = { context_window = 128000 } }",
    )?;
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (key, value) in t.entries {
        let p = join(path, &key.name);
        let Some(m) = Table::read(
            cx,
            value,
            &p,
            "{ encoding = \"o200k_base\", context_window = 128000 }",
        ) else {
            ok = false;
            continue;
        };
        m.check_keys(cx, &["encoding", "context_window"]);
        let encoding = m.maybe(cx, "encoding", |cx, n, p| {
            choice(
                cx,
                n,
                p,
                &[
                    (Encoding::O200kBase.as_str(), Encoding::O200kBase),
                    (Encoding::Cl100kBase.as_str(), Encoding::Cl100kBase),
                ],
            )
        });
        let context_window = m.maybe(cx, "context_window", |cx, n, p| {
            whole(cx, n, p, 1, u64::MAX)
        });
        match (encoding, context_window) {
            (Some(encoding), Some(context_window)) => {
                out.insert(
                    key.name.clone(),
                    ModelOverride {
                        encoding,
                        context_window,
                    },
                );
            }
            _ => ok = false,
        }
    }
    ok.then_some(out)
}
