//! `[defaults]`: values every other section falls back on.

use crate::policy::Defaults;
use crate::policy::parse::read::{Cx, Table, boolean, whole};
use crate::policy::parse::tree::Node;

/// Largest `key_capacity`: the keyed state of a budget may be sized up front.
const MAX_KEY_CAPACITY: u64 = 10_000_000;

/// Reads `[defaults]`.
pub(super) fn defaults(cx: &mut Cx, node: &Node, path: &str) -> Option<Defaults> {
    let t = Table::read(cx, node, path, "{ max_completion_tokens = 1024 }")?;
    t.check_keys(
        cx,
        &[
            "max_completion_tokens",
            "key_capacity",
            "enforce_context_window",
        ],
    );
    let d = Defaults::default();
    let max_completion_tokens = t.opt(
        cx,
        "max_completion_tokens",
        d.max_completion_tokens,
        |cx, n, p| whole(cx, n, p, 1, u64::from(u32::MAX)),
    );
    let key_capacity = t.opt(cx, "key_capacity", d.key_capacity, key_capacity);
    let enforce_context_window = t.opt(
        cx,
        "enforce_context_window",
        d.enforce_context_window,
        boolean,
    );
    Some(Defaults {
        max_completion_tokens: max_completion_tokens?,
        key_capacity: key_capacity?,
        enforce_context_window: enforce_context_window?,
    })
}

/// `key_capacity`, in `[defaults]` or a budget: how many keys' state a budget keeps.
pub(super) fn key_capacity(cx: &mut Cx, node: &Node, path: &str) -> Option<usize> {
    whole(cx, node, path, 1, MAX_KEY_CAPACITY).and_then(|v| usize::try_from(v).ok())
}
