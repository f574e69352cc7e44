//! Properties of `tokens::split` on random texts mixing ASCII words, punctuation, line breaks,
//! CJK and emoji, for exact (o200k_base, cl100k_base) and estimated models.

use proptest::prelude::*;
use tollgate::tokens::{Chunk, ModelTable, SplitError, count_text, split};

const MODELS: [&str; 3] = ["gpt-4o", "gpt-4", "qwen-max"];

/// Fragments a random text is made of.
const FRAGMENTS: &[&str] = &[
    "the",
    "quick",
    "Brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dogs",
    "tokenization",
    "x",
    "42",
    "3.14",
    " ",
    " ",
    " ",
    "  ",
    "\t",
    ".",
    ". ",
    "! ",
    "? ",
    ", ",
    "; ",
    ": ",
    "\n",
    "\n\n",
    "\r\n",
    "\n \n",
    "\"",
    "(",
    ")",
    "…",
    "今天",
    "天气",
    "很好",
    "。",
    "，",
    "！",
    "？",
    "；",
    "、",
    "「",
    "」",
    "字",
    "東京",
    "こんにちは",
    "안녕",
    "😀",
    "👍🏽",
    "👨‍👩‍👧",
    "é",
    "ß",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "https://example.com/a/b?c=d",
];

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(FRAGMENTS), 1..400)
        .prop_map(|parts| parts.concat())
}

fn count(model: &str, s: &str) -> usize {
    count_text(ModelTable::bundled(), model, s).tokens as usize
}

/// What every split must satisfy, whatever the text.
fn check(model: &str, text: &str, max: usize, overlap: usize, chunks: &[Chunk<'_>]) {
    assert!(!chunks.is_empty());
    let exact = count_text(ModelTable::bundled(), model, "x").exact;
    let mut fresh = String::new();
    for (i, c) in chunks.iter().enumerate() {
        assert!(!c.text.is_empty(), "chunk {i} is empty");
        assert_eq!(c.text, &text[c.start..c.end]);
        assert_eq!(c.exact, exact);
        assert_eq!(c.tokens, count(model, c.text), "chunk {i}: {:?}", c.text);
        assert!(c.tokens <= max, "chunk {i}: {} > {max}", c.tokens);
        assert!(c.overlap < c.text.len(), "chunk {i} has no new text");
        fresh.push_str(&c.text[c.overlap..]);
        if i == 0 || overlap == 0 {
            assert_eq!(c.overlap, 0);
        } else {
            let prev = &chunks[i - 1];
            assert_eq!(c.start + c.overlap, prev.end);
            let repeated = &c.text[..c.overlap];
            assert!(count(model, repeated) <= overlap, "chunk {i}: {repeated:?}");
        }
    }
    assert_eq!(fresh, text);
    if overlap == 0 {
        let joined: String = chunks.iter().map(|c| c.text).collect();
        assert_eq!(joined, text);
    }
    // Greedy: no chunk could also have taken all of the next chunk's new text.
    for w in chunks.windows(2) {
        let both = &text[w[0].start..w[1].end];
        assert!(
            count(model, both) > max,
            "{:?} then {:?}",
            w[0].text,
            w[1].text
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn chunks_fit_and_give_the_text_back(
        text in text(),
        model in proptest::sample::select(&MODELS[..]),
        max in 1usize..200,
        overlap_share in 0usize..=50,
    ) {
        let overlap = max * overlap_share / 100;
        match split(ModelTable::bundled(), model, &text, max, overlap) {
            Ok(chunks) => check(model, &text, max, overlap, &chunks),
            Err(SplitError::CharTooLarge { at, tokens, max_tokens }) => {
                let c = text[at..].chars().next().expect("a character at the offset");
                prop_assert_eq!(count(model, c.encode_utf8(&mut [0; 4])), tokens);
                prop_assert!(tokens > max_tokens);
            }
            Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
        }
    }

    #[test]
    fn paragraphs_that_fit_are_cut_only_at_their_ends(
        paragraphs in proptest::collection::vec(
            proptest::collection::vec(proptest::sample::select(&FRAGMENTS[..12]), 1..30)
                .prop_map(|w| w.join(" ") + "."),
            2..40,
        ),
        model in proptest::sample::select(&MODELS[..]),
        extra in 0usize..100,
    ) {
        let text = paragraphs.join("\n\n");
        let largest = text.split("\n\n").enumerate().map(|(i, p)| {
            let last = i + 1 == paragraphs.len();
            count(model, &(p.to_owned() + if last { "" } else { "\n\n" }))
        }).max().expect("paragraphs");
        let max = largest + extra;
        let chunks = split(ModelTable::bundled(), model, &text, max, 0).expect("splits");
        check(model, &text, max, 0, &chunks);
        for c in &chunks[..chunks.len() - 1] {
            prop_assert!(c.text.ends_with(".\n\n"), "{:?}", c.text);
        }
    }
}
