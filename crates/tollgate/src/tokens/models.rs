//! The model table: encodings, context windows and prices, bundled and overridable.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

use super::{Encoding, Price};

/// What tollgate knows about one model.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ModelInfo {
    /// The exact vocabulary, for OpenAI models; `None` means prompts are estimated.
    pub encoding: Option<Encoding>,
    /// Maximum prompt (input) tokens.
    pub context_window: Option<u64>,
    /// Maximum completion tokens per response.
    pub max_output_tokens: Option<u64>,
    /// Prices per 1M tokens.
    pub price: Option<Price>,
}

/// Model names to [`ModelInfo`], with forgiving name resolution.
///
/// [`lookup`](ModelTable::lookup) tries, in order, and returns the first hit:
/// 1. the exact name (`gpt-4o-mini`);
/// 2. the name after its provider prefix (`openai/gpt-4o`, `azure/gpt-4o`, `openrouter/openai/gpt-4o`
///    → `gpt-4o`), and the base model of a fine-tune (`ft:gpt-4o-mini:acme::abc` → `gpt-4o-mini`);
/// 3. the name with snapshot suffixes removed one at a time: `-2024-08-06`, `-20241022`, `-0613`,
///    `-latest`, `-preview`, `@001`, `:free`, `-v2` (`gpt-4o-mini-2024-07-18` → `gpt-4o-mini`).
///    Only such suffixes are removed, so `gpt-4o-mini` never resolves to `gpt-4o`.
///
/// An exact hit costs one hash lookup and allocates nothing.
///
/// ```
/// use tollgate::tokens::{Encoding, ModelTable};
/// let table = ModelTable::bundled();
/// assert_eq!(table.encoding("openai/gpt-4o-2024-08-06"), Some(Encoding::O200kBase));
/// assert_eq!(table.price("gpt-4o-mini").map(|p| p.input), Some(0.15));
/// assert_eq!(table.context_window("gpt-4.1"), Some(1_047_576));
/// assert!(table.lookup("no-such-model").is_none());
/// ```
#[derive(Debug, Clone, Default)]
pub struct ModelTable {
    models: HashMap<String, ModelInfo>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    models: HashMap<String, FileEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    encoding: Option<String>,
    context_window: Option<u64>,
    max_output_tokens: Option<u64>,
    input: Option<f64>,
    cached_input: Option<f64>,
    output: Option<f64>,
}

const BUNDLED_TOML: &str = include_str!("models.toml");

fn parse_bundled(text: &str) -> Result<ModelTable, String> {
    let file: TableFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut models = HashMap::with_capacity(file.models.len());
    for (name, e) in file.models {
        let encoding = match e.encoding.as_deref() {
            None => None,
            Some(s) => Some(
                Encoding::from_name(s)
                    .ok_or_else(|| format!("model {name:?}: unknown encoding {s:?}"))?,
            ),
        };
        let price = match (e.input, e.output) {
            (Some(input), Some(output)) => Some(Price {
                input,
                cached_input: e.cached_input.unwrap_or(input),
                output,
            }),
            (None, None) if e.cached_input.is_none() => None,
            _ => return Err(format!("model {name:?}: give both input and output prices")),
        };
        models.insert(
            name,
            ModelInfo {
                encoding,
                context_window: e.context_window,
                max_output_tokens: e.max_output_tokens,
                price,
            },
        );
    }
    Ok(ModelTable { models })
}

impl ModelTable {
    /// An empty table (every lookup misses; encodings still follow tiktoken's name rules).
    pub fn empty() -> ModelTable {
        ModelTable::default()
    }

    /// The table bundled with tollgate (`src/tokens/models.toml`), parsed once.
    ///
    /// ```
    /// let table = tollgate::tokens::ModelTable::bundled();
    /// assert!(table.len() >= 25);
    /// ```
    pub fn bundled() -> &'static ModelTable {
        static BUNDLED: OnceLock<ModelTable> = OnceLock::new();
        BUNDLED.get_or_init(|| {
            parse_bundled(BUNDLED_TOML)
                .expect("the bundled models.toml is valid (a unit test parses it)")
        })
    }

    /// The bundled table with overrides applied; overrides win.
    ///
    /// `prices` replaces a model's price (adding the model when it is new). `models` sets a
    /// model's encoding and context window; a `None` keeps the bundled value.
    ///
    /// ```
    /// use tollgate::tokens::{Encoding, ModelTable, Price};
    /// let cheap = Price { input: 0.1, cached_input: 0.05, output: 0.2 };
    /// let table = ModelTable::with_overrides(
    ///     [("gpt-4o", cheap)],
    ///     [("my-finetune", Some(Encoding::O200kBase), Some(32_000))],
    /// );
    /// assert_eq!(table.price("gpt-4o"), Some(cheap));
    /// assert_eq!(table.encoding("my-finetune"), Some(Encoding::O200kBase));
    /// assert_eq!(table.context_window("my-finetune"), Some(32_000));
    /// ```
    pub fn with_overrides<'a>(
        prices: impl IntoIterator<Item = (&'a str, Price)>,
        models: impl IntoIterator<Item = (&'a str, Option<Encoding>, Option<u64>)>,
    ) -> ModelTable {
        let mut table = ModelTable::bundled().clone();
        for (name, price) in prices {
            table.models.entry(name.to_owned()).or_default().price = Some(price);
        }
        for (name, encoding, context_window) in models {
            let info = table.models.entry(name.to_owned()).or_default();
            if encoding.is_some() {
                info.encoding = encoding;
            }
            if context_window.is_some() {
                info.context_window = context_window;
            }
        }
        table
    }

    /// Adds or replaces one model.
    pub fn insert(&mut self, model: &str, info: ModelInfo) {
        self.models.insert(model.to_owned(), info);
    }

    /// Number of models in the table.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// True when the table has no model.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The model names in the table, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// Resolves `model` as described on [`ModelTable`].
    pub fn lookup(&self, model: &str) -> Option<ModelInfo> {
        if let Some(info) = self.models.get(model) {
            return Some(*info);
        }
        let mut name = base_name(model);
        if name != model
            && let Some(info) = self.models.get(name)
        {
            return Some(*info);
        }
        while let Some(shorter) = strip_snapshot(name) {
            name = shorter;
            if let Some(info) = self.models.get(name) {
                return Some(*info);
            }
        }
        None
    }

    /// The exact encoding for `model`: the table's, else tiktoken's model-name rules
    /// (see [`encoding_for_model`]).
    pub fn encoding(&self, model: &str) -> Option<Encoding> {
        match self.lookup(model) {
            Some(ModelInfo {
                encoding: Some(e), ..
            }) => Some(e),
            _ => encoding_by_name(model),
        }
    }

    /// The price of `model`, if known.
    pub fn price(&self, model: &str) -> Option<Price> {
        self.lookup(model).and_then(|i| i.price)
    }

    /// The context window (maximum prompt tokens) of `model`, if known.
    pub fn context_window(&self, model: &str) -> Option<u64> {
        self.lookup(model).and_then(|i| i.context_window)
    }

    /// The maximum completion tokens of `model`, if known.
    pub fn max_output_tokens(&self, model: &str) -> Option<u64> {
        self.lookup(model).and_then(|i| i.max_output_tokens)
    }
}

/// The exact encoding of an OpenAI model name, or `None` for other vendors.
///
/// Uses the bundled table, then tiktoken's prefix rules: `gpt-4o*`, `chatgpt-4o*`, `gpt-4.1*`,
/// `gpt-4.5*`, `gpt-5*`, `o1*`, `o3*`, `o4*` → `o200k_base`; `gpt-4*`, `gpt-3.5*`, `gpt-35-turbo*`,
/// `text-embedding-3*`, `text-embedding-ada-002` → `cl100k_base`. Provider prefixes and `ft:`
/// fine-tune names resolve to their base model.
///
/// ```
/// use tollgate::tokens::{encoding_for_model, Encoding};
/// assert_eq!(encoding_for_model("gpt-4o-mini-2024-07-18"), Some(Encoding::O200kBase));
/// assert_eq!(encoding_for_model("o3-pro"), Some(Encoding::O200kBase));
/// assert_eq!(encoding_for_model("gpt-4-0613"), Some(Encoding::Cl100kBase));
/// assert_eq!(encoding_for_model("azure/gpt-35-turbo-16k"), Some(Encoding::Cl100kBase));
/// assert_eq!(encoding_for_model("deepseek-chat"), None);
/// ```
pub fn encoding_for_model(model: &str) -> Option<Encoding> {
    ModelTable::bundled().encoding(model)
}

/// tiktoken's model-name → encoding rules, on the name without provider prefix.
fn encoding_by_name(model: &str) -> Option<Encoding> {
    let name = base_name(model);
    const O200K: [&str; 8] = [
        "gpt-4o",
        "chatgpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "o1",
        "o3",
        "o4",
    ];
    const CL100K: [&str; 5] = [
        "gpt-4",
        "gpt-3.5",
        "gpt-35-turbo",
        "text-embedding-3",
        "text-embedding-ada-002",
    ];
    if O200K.iter().any(|p| is_family(name, p)) {
        Some(Encoding::O200kBase)
    } else if CL100K.iter().any(|p| is_family(name, p)) {
        Some(Encoding::Cl100kBase)
    } else {
        None
    }
}

/// `name` is `prefix` or starts with `prefix` followed by `-` or `.` (so `o1` matches `o1-mini`
/// but not `o10`, and `gpt-4` matches `gpt-4-turbo` but not `gpt-4o`).
fn is_family(name: &str, prefix: &str) -> bool {
    match name.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('-') || rest.starts_with('.'),
        None => false,
    }
}

/// Drops a provider prefix (`openai/…`, `openrouter/openai/…`) and the fine-tune wrapper
/// (`ft:gpt-4o-mini:org::id`). Allocation-free.
fn base_name(model: &str) -> &str {
    let mut name = model.trim();
    if let Some(pos) = name.rfind('/') {
        name = &name[pos + 1..];
    }
    if let Some(rest) = name.strip_prefix("ft:") {
        name = rest.split(':').next().unwrap_or(rest);
    }
    name
}

/// Removes one snapshot/version suffix, or returns `None` when there is none.
fn strip_snapshot(name: &str) -> Option<&str> {
    // OpenRouter variants and Bedrock revisions: "model:free", "model-v2:0".
    if let Some(pos) = name.find(':') {
        return non_empty(&name[..pos]);
    }
    // Vertex-style versions: "model@001".
    if let Some(pos) = name.find('@') {
        return non_empty(&name[..pos]);
    }
    for word in ["-latest", "-preview"] {
        if let Some(rest) = name.strip_suffix(word) {
            return non_empty(rest);
        }
    }
    let b = name.as_bytes();
    let n = b.len();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    // -YYYY-MM-DD
    if n > 11
        && b[n - 11] == b'-'
        && b[n - 6] == b'-'
        && b[n - 3] == b'-'
        && digits(n - 10..n - 6)
        && digits(n - 5..n - 3)
        && digits(n - 2..n)
    {
        return non_empty(&name[..n - 11]);
    }
    // -YYYYMMDD or -MMDD
    for len in [8, 4] {
        if n > len + 1 && b[n - len - 1] == b'-' && digits(n - len..n) {
            return non_empty(&name[..n - len - 1]);
        }
    }
    // -v1, -v2 (Bedrock model revisions)
    if let Some(pos) = name.rfind("-v")
        && pos + 2 < n
        && digits(pos + 2..n)
    {
        return non_empty(&name[..pos]);
    }
    None
}

fn non_empty(s: &str) -> Option<&str> {
    if s.is_empty() { None } else { Some(s) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_parses_and_covers_required_models() {
        let t = ModelTable::bundled();
        for m in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-4.1-mini",
            "gpt-4.1-nano",
            "o1",
            "o3",
            "o3-mini",
            "o4-mini",
            "gpt-4-turbo",
            "gpt-4",
            "gpt-3.5-turbo",
            "gpt-5",
            "gpt-5-mini",
            "text-embedding-3-small",
            "text-embedding-3-large",
            "deepseek-chat",
            "deepseek-reasoner",
            "qwen-max",
            "qwen-plus",
            "qwen-turbo",
            "claude-3-5-sonnet",
        ] {
            let info = t.lookup(m).unwrap_or_else(|| panic!("{m} missing"));
            let p = info.price.unwrap_or_else(|| panic!("{m} has no price"));
            assert!(
                p.input >= 0.0 && p.output >= 0.0 && p.cached_input <= p.input,
                "{m}"
            );
            assert!(info.context_window.is_some(), "{m}");
            let is_openai = m.starts_with("gpt") || m.starts_with('o') || m.starts_with("text-");
            assert_eq!(info.encoding.is_some(), is_openai, "{m}");
        }
    }

    #[test]
    fn every_openai_entry_agrees_with_name_rules() {
        let t = ModelTable::bundled();
        for name in t.names() {
            if let Some(e) = t.lookup(name).and_then(|i| i.encoding) {
                assert_eq!(encoding_by_name(name), Some(e), "{name}");
            }
        }
    }

    #[test]
    fn bad_tables_are_rejected() {
        assert!(parse_bundled("[models.x]\nencoding = \"p50k\"\n").is_err());
        assert!(parse_bundled("[models.x]\ninput = 1.0\n").is_err());
        assert!(parse_bundled("[models.x]\nprice = 1.0\n").is_err());
        assert!(parse_bundled("models = 3").is_err());
        assert!(parse_bundled("[models.x]\ncontext_window = -1\n").is_err());
    }

    #[test]
    fn cached_price_defaults_to_input() {
        let t = ModelTable::bundled();
        let p = t.price("gpt-4").expect("gpt-4 is bundled");
        assert_eq!(p.cached_input, p.input);
    }

    #[test]
    fn snapshot_and_prefix_resolution() {
        let t = ModelTable::bundled();
        let mini = t.lookup("gpt-4o-mini").expect("bundled");
        let four_o = t.lookup("gpt-4o").expect("bundled");
        assert_ne!(mini, four_o);
        assert_eq!(t.lookup("gpt-4o-mini-2024-07-18"), Some(mini));
        assert_eq!(t.lookup("openai/gpt-4o-mini-2024-07-18"), Some(mini));
        assert_eq!(t.lookup("gpt-4o-2024-08-06"), Some(four_o));
        assert_eq!(t.lookup("azure/gpt-4o"), Some(four_o));
        assert_eq!(t.lookup("openrouter/openai/gpt-4o:free"), Some(four_o));
        assert_eq!(
            t.lookup("ft:gpt-4o-mini-2024-07-18:acme::abc123"),
            Some(mini)
        );
        // An exact dated entry wins over stripping.
        assert_eq!(t.price("gpt-4o-2024-05-13").map(|p| p.input), Some(5.0));
        assert_eq!(t.lookup("gpt-4-0613"), t.lookup("gpt-4"));
        assert_eq!(
            t.lookup("gpt-4-1106-preview")
                .and_then(|i| i.price)
                .map(|p| p.input),
            Some(10.0)
        );
        assert_eq!(
            t.lookup("claude-3-5-sonnet-20241022"),
            t.lookup("claude-3-5-sonnet")
        );
        assert_eq!(
            t.lookup("claude-3-5-sonnet-latest"),
            t.lookup("claude-3-5-sonnet")
        );
        assert_eq!(
            t.lookup("gpt-4.1-mini-2025-04-14"),
            t.lookup("gpt-4.1-mini")
        );
        assert_eq!(t.lookup("o3-mini-2025-01-31"), t.lookup("o3-mini"));
        // Not snapshot suffixes: no false resolution.
        assert!(t.lookup("gpt-4o-mini-tts").is_none());
        assert!(t.lookup("gpt-4o-minix").is_none());
        assert!(t.lookup("").is_none());
        assert!(t.lookup("/").is_none());
        assert!(t.lookup("-2024-08-06").is_none());
        assert!(t.lookup("ft:").is_none());
        assert!(t.lookup(":free").is_none());
    }

    #[test]
    fn name_rules() {
        use Encoding::*;
        for (m, e) in [
            ("gpt-4o", Some(O200kBase)),
            ("gpt-4o-audio-preview", Some(O200kBase)),
            ("chatgpt-4o-latest", Some(O200kBase)),
            ("gpt-4.1-nano-2025-04-14", Some(O200kBase)),
            ("gpt-5.1-codex", Some(O200kBase)),
            ("o1-mini", Some(O200kBase)),
            ("o4-mini-deep-research", Some(O200kBase)),
            ("gpt-4-32k", Some(Cl100kBase)),
            ("gpt-3.5-turbo-instruct", Some(Cl100kBase)),
            ("text-embedding-3-large", Some(Cl100kBase)),
            ("o10", None),
            ("gpt-oss-120b", None),
            ("qwen-max", None),
            ("", None),
        ] {
            assert_eq!(encoding_by_name(m), e, "{m}");
        }
    }

    #[test]
    fn overrides_win_and_none_keeps_bundled() {
        let p = Price {
            input: 1.0,
            cached_input: 0.5,
            output: 2.0,
        };
        let t = ModelTable::with_overrides(
            [("gpt-4o", p), ("brand-new", p)],
            [
                ("gpt-4o", None, Some(64_000)),
                ("deepseek-chat", Some(Encoding::Cl100kBase), None),
            ],
        );
        assert_eq!(t.price("gpt-4o"), Some(p));
        assert_eq!(t.encoding("gpt-4o"), Some(Encoding::O200kBase));
        assert_eq!(t.context_window("gpt-4o"), Some(64_000));
        assert_eq!(t.max_output_tokens("gpt-4o"), Some(16384));
        assert_eq!(t.price("brand-new"), Some(p));
        assert_eq!(t.encoding("deepseek-chat"), Some(Encoding::Cl100kBase));
        // Overrides resolve snapshots too.
        assert_eq!(t.price("gpt-4o-2024-11-20"), Some(p));
        // The bundled table itself is untouched.
        assert_ne!(ModelTable::bundled().price("gpt-4o"), Some(p));
    }

    #[test]
    fn empty_table_still_knows_openai_names() {
        let t = ModelTable::empty();
        assert!(t.is_empty());
        assert_eq!(t.encoding("gpt-4o"), Some(Encoding::O200kBase));
        assert_eq!(t.price("gpt-4o"), None);
    }
}
