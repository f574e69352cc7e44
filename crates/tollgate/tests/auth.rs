//! Credentials: secrets, JWT minting, OAuth2 token caching (see `src/auth/`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use tollgate::auth::{
    AuthError, Credentials, JwtMinter, Resolved, Secret, Token, TokenCache, apply, mint_hs256,
    parse_token_response, resolve, token_request_url,
};
use tollgate::policy::{Auth, SecretRef, TokenPlacement};

/// A distinctive secret searched for in every formatted string.
const SECRET: &str = "sk-SECRET-9f8e7d";
const BOUND: Duration = Duration::from_secs(20);

fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A file under the temp directory holding `content`, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, content: &[u8]) -> Self {
        let path =
            std::env::temp_dir().join(format!("tollgate-auth-test-{}-{tag}", std::process::id()));
        std::fs::write(&path, content).expect("temp dir is writable");
        TempFile(path)
    }

    fn secret_ref(&self) -> SecretRef {
        SecretRef::File(self.0.clone())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn assert_no_secret(texts: &[String]) {
    for text in texts {
        assert!(!text.contains(SECRET), "secret leaked in: {text}");
    }
}

fn debug_forms<T: std::fmt::Debug>(value: &T) -> [String; 2] {
    [format!("{value:?}"), format!("{value:#?}")]
}

/// A variable already set in this process (tests never call `set_var`: other threads read the
/// environment concurrently).
fn some_env_var() -> (String, String) {
    std::env::vars()
        .find(|(_, v)| !v.is_empty())
        .expect("the test process has a non-empty environment variable")
}

// ---------------------------------------------------------------- secrets

#[test]
fn resolve_reads_env_and_file() {
    let (name, value) = some_env_var();
    let s = resolve(&SecretRef::Env(name)).expect("a set variable");
    assert_eq!(s.expose(), value);

    let file = TempFile::new("resolve", format!("{SECRET}\n").as_bytes());
    let s = resolve(&file.secret_ref()).expect("readable file");
    assert_eq!(s.expose(), SECRET);
}

#[test]
fn resolve_errors_name_the_variable_or_path_and_say_what_to_do() {
    let err = resolve(&SecretRef::Env("TOLLGATE_TEST_SURELY_UNSET_7x".into())).unwrap_err();
    assert_eq!(
        err,
        AuthError::EnvMissing {
            name: "TOLLGATE_TEST_SURELY_UNSET_7x".into()
        }
    );
    let text = err.to_string();
    assert!(
        text.contains("TOLLGATE_TEST_SURELY_UNSET_7x") && text.contains("set it"),
        "{text}"
    );

    let missing = std::env::temp_dir().join("tollgate-auth-test-no-such-file");
    let err = resolve(&SecretRef::File(missing.clone())).unwrap_err();
    assert!(matches!(err, AuthError::FileUnreadable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&missing.display().to_string()) && text.contains("check"),
        "{text}"
    );

    let empty = TempFile::new("empty", b"");
    let err = resolve(&empty.secret_ref()).unwrap_err();
    assert!(matches!(err, AuthError::FileEmpty { .. }), "{err:?}");
    assert!(err.to_string().contains(&empty.0.display().to_string()));

    let binary = TempFile::new("binary", &[0x80, 0xff, 0x00]);
    let err = resolve(&binary.secret_ref()).unwrap_err();
    assert!(matches!(err, AuthError::FileNotUtf8 { .. }), "{err:?}");
    assert!(err.to_string().contains(&binary.0.display().to_string()));
}

// ---------------------------------------------------------------- JWT

fn zhipu_minter(ttl: Duration, refresh_before: Duration) -> JwtMinter {
    JwtMinter::new(
        Secret::new("tollgate-test-id"),
        Secret::new("tollgate-test-secret"),
        ttl,
        refresh_before,
    )
}

fn decode_json(part: &str) -> serde_json::Value {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url without padding");
    serde_json::from_slice(&bytes).expect("JSON")
}

/// Splits a token and checks its HS256 signature with ring.
fn verify(token: &str, key: &[u8]) -> (serde_json::Value, serde_json::Value) {
    let (signing_input, signature) = token.rsplit_once('.').expect("three parts");
    let (header, claims) = signing_input.split_once('.').expect("three parts");
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .expect("base64url signature");
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        signing_input.as_bytes(),
        &signature,
    )
    .expect("valid HS256 signature");
    (decode_json(header), decode_json(claims))
}

/// Computed independently with Python's standard library:
/// `hmac.new(b"tollgate-test-secret", signing_input, hashlib.sha256)` and
/// `base64.urlsafe_b64encode(..).rstrip(b"=")` over the header and claims below.
#[test]
fn jwt_test_vector() {
    let minter = zhipu_minter(Duration::from_secs(1800), Duration::from_secs(60));
    let token = minter.mint(at_ms(1_700_000_000_000));
    assert_eq!(
        token,
        "eyJhbGciOiJIUzI1NiIsInNpZ25fdHlwZSI6IlNJR04ifQ\
         .eyJhcGlfa2V5IjoidG9sbGdhdGUtdGVzdC1pZCIsImV4cCI6MTcwMDAwMTgwMDAwMCwidGltZXN0YW1wIjoxNzAwMDAwMDAwMDAwfQ\
         ._1XHAxQRNzbsdK-Jhiqoa1OZdJKK4CIDnNEyrNJf-CM"
    );
    // The same through the general minter.
    assert_eq!(
        mint_hs256(
            r#"{"alg":"HS256","sign_type":"SIGN"}"#,
            r#"{"api_key":"tollgate-test-id","exp":1700001800000,"timestamp":1700000000000}"#,
            b"tollgate-test-secret",
        ),
        token
    );
}

#[test]
fn jwt_verifies_with_ring_and_has_the_zhipu_fields() {
    let minter = zhipu_minter(Duration::from_secs(1800), Duration::from_secs(60));
    let now = at_ms(1_712_345_678_901);
    let token = minter.token(now);
    assert!(!token.contains('='), "no padding: {token}");
    let (header, claims) = verify(&token, b"tollgate-test-secret");
    assert_eq!(
        header,
        serde_json::json!({"alg": "HS256", "sign_type": "SIGN"})
    );
    assert_eq!(
        claims,
        serde_json::json!({
            "api_key": "tollgate-test-id",
            "exp": 1_712_345_678_901u64 + 1_800_000,
            "timestamp": 1_712_345_678_901u64,
        })
    );
}

#[test]
fn mint_hs256_signs_any_claims_and_rejects_tampering() {
    let token = mint_hs256(r#"{"alg":"HS256","typ":"JWT"}"#, r#"{"sub":"x"}"#, b"k3y");
    let (header, claims) = verify(&token, b"k3y");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(claims["sub"], "x");

    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let key = hmac::Key::new(hmac::HMAC_SHA256, b"other key");
    assert!(hmac::verify(&key, input.as_bytes(), &sig).is_err());
}

#[test]
fn jwt_refreshes_exactly_at_exp_minus_refresh_before() {
    let minter = zhipu_minter(Duration::from_secs(1800), Duration::from_secs(60));
    let t0 = 1_700_000_000_000u64;
    let boundary = t0 + 1_740_000; // exp - refresh_before
    let first = minter.token(at_ms(t0));
    let same = minter.token(at_ms(boundary - 1));
    assert!(Arc::ptr_eq(&first, &same), "cached until the boundary");

    let second = minter.token(at_ms(boundary));
    assert_ne!(first, second, "a new token at the boundary");
    let (_, claims) = verify(&second, b"tollgate-test-secret");
    assert_eq!(claims["timestamp"], boundary);
    assert_eq!(claims["exp"], boundary + 1_800_000);
    assert!(Arc::ptr_eq(&second, &minter.token(at_ms(boundary + 1))));
}

#[test]
fn jwt_concurrent_callers_share_one_token() {
    let minter = Arc::new(zhipu_minter(
        Duration::from_secs(1800),
        Duration::from_secs(60),
    ));
    let earlier = minter.token(at_ms(1_000));
    // All threads find the token due (at the boundary) at once: one mint between them.
    let due = at_ms(1_000 + 1_740_000);
    let barrier = Arc::new(std::sync::Barrier::new(16));
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let (minter, barrier) = (Arc::clone(&minter), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                minter.token(due)
            })
        })
        .collect();
    let tokens: Vec<Arc<str>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for t in &tokens {
        assert!(Arc::ptr_eq(t, &tokens[0]), "one mint for all callers");
    }
    assert!(!Arc::ptr_eq(&tokens[0], &earlier));
}

// ---------------------------------------------------------------- OAuth2 parsing

#[test]
fn token_response_success() {
    let now = at_ms(1_700_000_000_000);
    let body = br#"{"refresh_token":"r","expires_in":2592000,"session_key":"k","access_token":"24.6c5e1ff107f0e8bcef8c46d3424a0e78.2592000.1485516651.282335-8574074","scope":"public"}"#;
    let token = parse_token_response(200, body, now).expect("Baidu success body");
    assert_eq!(
        token.access_token.expose(),
        "24.6c5e1ff107f0e8bcef8c46d3424a0e78.2592000.1485516651.282335-8574074"
    );
    assert_eq!(token.expires_at, now + Duration::from_secs(2_592_000));
}

#[test]
fn token_response_errors_are_clear_and_hold_no_secret() {
    let now = at_ms(0);
    let rejected = parse_token_response(
        401,
        br#"{"error":"invalid_client","error_description":"unknown client id"}"#,
        now,
    )
    .unwrap_err();
    assert_eq!(
        rejected,
        AuthError::TokenRejected {
            status: 401,
            code: "invalid_client".into(),
            description: "unknown client id".into(),
        }
    );
    let text = rejected.to_string();
    assert!(
        text.contains("invalid_client") && text.contains("client_secret"),
        "{text}"
    );

    // Baidu may also send its error with status 200.
    let rejected_200 = parse_token_response(
        200,
        br#"{"error":"invalid_client","error_description":"Client authentication failed"}"#,
        now,
    )
    .unwrap_err();
    assert!(matches!(
        rejected_200,
        AuthError::TokenRejected { status: 200, .. }
    ));

    let html = parse_token_response(502, b"<html>bad gateway</html>", now).unwrap_err();
    assert_eq!(html, AuthError::TokenStatus { status: 502 });
    let status_json = parse_token_response(503, br#"{"message":"busy"}"#, now).unwrap_err();
    assert_eq!(status_json, AuthError::TokenStatus { status: 503 });

    let cases: &[(&[u8], &str)] = &[
        (b"not json at all", "not JSON"),
        (b"[1,2]", "not an object"),
        (br#"{"expires_in":3600}"#, "`access_token` is missing"),
        (
            br#"{"access_token":"","expires_in":3600}"#,
            "`access_token` is empty",
        ),
        (
            br#"{"access_token":42,"expires_in":3600}"#,
            "`access_token` is not a string",
        ),
        // The token is present but unusable: the error must not quote it.
        (
            br#"{"access_token":"sk-SECRET-9f8e7d"}"#,
            "`expires_in` is missing",
        ),
        (
            br#"{"access_token":"sk-SECRET-9f8e7d","expires_in":"sk-SECRET-9f8e7d"}"#,
            "expires_in",
        ),
    ];
    for (body, want) in cases {
        let err = parse_token_response(200, body, now).unwrap_err();
        assert!(
            matches!(err, AuthError::TokenResponse { status: 200, .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(want), "{text}");
        assert_no_secret(&[text, format!("{err:?}")]);
    }
}

#[test]
fn token_request_url_encodes_by_hand() {
    assert_eq!(
        token_request_url(
            "https://aip.baidubce.com/oauth/2.0/token",
            "AK/1+x",
            "s k&=?#%é"
        ),
        "https://aip.baidubce.com/oauth/2.0/token?grant_type=client_credentials\
         &client_id=AK%2F1%2Bx&client_secret=s%20k%26%3D%3F%23%25%C3%A9"
    );
    assert_eq!(
        token_request_url("https://h/token?v=2", "a-b_c.d~", "x"),
        "https://h/token?v=2&grant_type=client_credentials&client_id=a-b_c.d~&client_secret=x"
    );
}

#[test]
fn apply_places_the_token() {
    let token = Token {
        access_token: Secret::new("24.a/b"),
        expires_at: at_ms(0),
    };
    let mut url = String::from("https://qianfan.baidubce.com/chat/eb-instant");
    let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
    apply(TokenPlacement::Query, &token, &mut url, &mut headers);
    assert_eq!(
        url,
        "https://qianfan.baidubce.com/chat/eb-instant?access_token=24.a%2Fb"
    );
    assert_eq!(headers.len(), 1, "query placement adds no header");

    // A replay with a new token replaces the old one.
    let newer = Token {
        access_token: Secret::new("25.c"),
        expires_at: at_ms(0),
    };
    apply(TokenPlacement::Query, &newer, &mut url, &mut headers);
    assert_eq!(
        url,
        "https://qianfan.baidubce.com/chat/eb-instant?access_token=25.c"
    );

    let mut url = String::from("https://h/v1/chat");
    apply(TokenPlacement::Header, &token, &mut url, &mut headers);
    apply(TokenPlacement::Header, &newer, &mut url, &mut headers);
    assert_eq!(url, "https://h/v1/chat");
    assert_eq!(
        headers,
        [
            ("Content-Type".to_string(), "application/json".to_string()),
            ("Authorization".to_string(), "Bearer 25.c".to_string()),
        ]
    );
}

// ---------------------------------------------------------------- token cache

fn token(name: &str, expires_at: SystemTime) -> Token {
    Token {
        access_token: Secret::new(name),
        expires_at,
    }
}

/// A fetch that counts its calls and returns `tok-<n>` valid for `life` from `now`.
fn counting_fetch(
    calls: &Arc<AtomicUsize>,
    now: SystemTime,
    life: Duration,
) -> impl std::future::Future<Output = Result<Token, AuthError>> + use<> {
    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
    async move { Ok(token(&format!("tok-{n}"), now + life)) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_gets_fetch_once() {
    let cache = Arc::new(TokenCache::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let barrier = Arc::new(tokio::sync::Barrier::new(51));
    let now = at_ms(1_700_000_000_000);

    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (cache, calls, gate, barrier) = (
                Arc::clone(&cache),
                Arc::clone(&calls),
                Arc::clone(&gate),
                Arc::clone(&barrier),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                cache
                    .get(now, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        // Hold the fetch open until every task has started.
                        gate.notified().await;
                        Ok(token("shared", now + Duration::from_secs(3600)))
                    })
                    .await
            })
        })
        .collect();

    tokio::time::timeout(BOUND, async {
        barrier.wait().await;
        gate.notify_one(); // stored as a permit if the fetch is not waiting yet
        let mut tokens = Vec::new();
        for t in tasks {
            tokens.push(t.await.expect("task").expect("token"));
        }
        for t in &tokens {
            assert!(Arc::ptr_eq(t, &tokens[0]));
        }
        assert_eq!(tokens[0].access_token.expose(), "shared");
    })
    .await
    .expect("finishes");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Fifty `get`s in flight at once (each polled until it waits) while the one fetch fails: all get
/// its error, none fetches again. Polling by hand makes "in flight" exact, with no timing.
#[tokio::test]
async fn concurrent_gets_share_one_failed_fetch() {
    let cache = TokenCache::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let now = at_ms(0);
    let mut gets: Vec<_> = (0..50)
        .map(|_| {
            let (calls, gate) = (Arc::clone(&calls), Arc::clone(&gate));
            Box::pin(cache.get(now, move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                gate.notified().await;
                Err(AuthError::TokenFetch {
                    message: "connection refused".into(),
                })
            }))
        })
        .collect();
    std::future::poll_fn(|cx| {
        for get in &mut gets {
            assert!(get.as_mut().poll(cx).is_pending(), "waits for the fetch");
        }
        std::task::Poll::Ready(())
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one fetch started");
    gate.notify_one();
    tokio::time::timeout(BOUND, async {
        for get in gets {
            let err = get.await.unwrap_err();
            assert!(matches!(err, AuthError::TokenFetch { .. }), "{err:?}");
        }
    })
    .await
    .expect("finishes");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A later, separate call tries again.
    let t = cache
        .get(now, || {
            counting_fetch(&calls, now, Duration::from_secs(3600))
        })
        .await
        .expect("recovers");
    assert_eq!(t.access_token.expose(), "tok-2");
}

#[tokio::test]
async fn token_is_refetched_at_expiry_minus_margin() {
    let cache = TokenCache::with_margin(Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    let t0 = at_ms(1_700_000_000_000);
    let life = Duration::from_secs(100);

    let first = cache
        .get(t0, || counting_fetch(&calls, t0, life))
        .await
        .unwrap();
    let later = t0 + Duration::from_millis(39_999);
    let again = cache
        .get(later, || counting_fetch(&calls, later, life))
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&first, &again), "cached before expiry - margin");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let boundary = t0 + Duration::from_secs(40);
    let second = cache
        .get(boundary, || counting_fetch(&calls, boundary, life))
        .await
        .unwrap();
    assert_eq!(second.access_token.expose(), "tok-2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        cache.current(boundary).unwrap().access_token.expose(),
        "tok-2"
    );
}

#[tokio::test]
async fn default_margin_is_sixty_seconds() {
    let cache = TokenCache::new();
    assert_eq!(cache.margin(), Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    let t0 = at_ms(0);
    // A token living 60 s is never usable with a 60 s margin.
    cache
        .get(t0, || counting_fetch(&calls, t0, Duration::from_secs(60)))
        .await
        .unwrap();
    cache
        .get(t0, || counting_fetch(&calls, t0, Duration::from_secs(61)))
        .await
        .unwrap();
    cache
        .get(t0, || counting_fetch(&calls, t0, Duration::from_secs(61)))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn invalidate_then_get_refetches_once() {
    let cache = TokenCache::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let now = at_ms(0);
    let life = Duration::from_secs(3600);
    let first = cache
        .get(now, || counting_fetch(&calls, now, life))
        .await
        .unwrap();
    cache.invalidate(&first);
    assert!(cache.current(now).is_none());
    let second = cache
        .get(now, || counting_fetch(&calls, now, life))
        .await
        .unwrap();
    let third = cache
        .get(now, || counting_fetch(&calls, now, life))
        .await
        .unwrap();
    assert_eq!(second.access_token.expose(), "tok-2");
    assert!(Arc::ptr_eq(&second, &third));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn invalidate_with_a_stale_token_does_nothing() {
    let cache = TokenCache::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let now = at_ms(0);
    let life = Duration::from_secs(3600);
    let old = cache
        .get(now, || counting_fetch(&calls, now, life))
        .await
        .unwrap();
    cache.invalidate(&old);
    let fresh = cache
        .get(now, || counting_fetch(&calls, now, life))
        .await
        .unwrap();

    cache.invalidate(&old); // a late 401 from a request that carried the old token
    // An equal-looking token that is not the cached one does nothing either.
    cache.invalidate(&token("tok-2", fresh.expires_at));
    let still = cache
        .get(now, || counting_fetch(&calls, now, life))
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&fresh, &still));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_401s_refetch_once() {
    let cache = Arc::new(TokenCache::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let now = at_ms(0);
    let life = Duration::from_secs(3600);
    let used = cache
        .get(now, || counting_fetch(&calls, now, life))
        .await
        .unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(30));
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let (cache, calls, used, barrier) = (
                Arc::clone(&cache),
                Arc::clone(&calls),
                Arc::clone(&used),
                Arc::clone(&barrier),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                cache.invalidate(&used); // each request got 401 with `used`
                cache.get(now, || counting_fetch(&calls, now, life)).await
            })
        })
        .collect();
    tokio::time::timeout(BOUND, async {
        for t in tasks {
            let t = t.await.expect("task").expect("token");
            assert_eq!(t.access_token.expose(), "tok-2");
        }
    })
    .await
    .expect("finishes");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_cancelled_fetch_leaves_the_cache_usable() {
    let cache = TokenCache::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let now = at_ms(0);
    {
        let pending = cache.get(now, || async {
            std::future::pending::<Result<Token, AuthError>>().await
        });
        // Poll once (the fetch starts and blocks), then drop it.
        let polled = tokio::time::timeout(Duration::ZERO, pending).await;
        assert!(polled.is_err());
    }
    let t = tokio::time::timeout(
        BOUND,
        cache.get(now, || {
            counting_fetch(&calls, now, Duration::from_secs(3600))
        }),
    )
    .await
    .expect("not stuck on the dropped fetch")
    .expect("token");
    assert_eq!(t.access_token.expose(), "tok-1");
}

// ---------------------------------------------------------------- Credentials

#[test]
fn bearer_pool_resolves_lazily_and_indexes_keys() {
    let k1 = TempFile::new("pool-1", format!("{SECRET}-1\n").as_bytes());
    let k2 = TempFile::new("pool-2", format!("{SECRET}-2").as_bytes());
    let creds = Credentials::new(&Auth::Bearer {
        keys: vec![k1.secret_ref(), k2.secret_ref()],
    });
    assert!(format!("{creds:?}").contains("unresolved"));
    let resolved = creds.resolve().expect("both files readable");
    assert_eq!(resolved.key_count(), 2);
    assert_eq!(resolved.key(0).unwrap().expose(), format!("{SECRET}-1"));
    assert_eq!(resolved.key(1).unwrap().expose(), format!("{SECRET}-2"));
    assert!(resolved.key(2).is_none());

    let text = format!("{creds:?}");
    assert!(
        text.contains("bearer") && text.contains(&k1.0.display().to_string()),
        "{text}"
    );
    assert_no_secret(&[text, format!("{resolved:?}")]);
}

#[test]
fn resolution_errors_are_kept() {
    let creds = Credentials::new(&Auth::Bearer {
        keys: vec![
            SecretRef::Env(some_env_var().0),
            SecretRef::Env("TOLLGATE_TEST_UNSET_POOL_KEY".into()),
        ],
    });
    let first = creds.resolve().unwrap_err();
    assert_eq!(
        first,
        AuthError::EnvMissing {
            name: "TOLLGATE_TEST_UNSET_POOL_KEY".into()
        }
    );
    assert_eq!(
        creds.resolve().unwrap_err(),
        first,
        "the same error, not a retry"
    );
    let text = format!("{creds:?}");
    assert!(
        text.contains("env:TOLLGATE_TEST_UNSET_POOL_KEY") && text.contains("is not set"),
        "{text}"
    );
}

#[test]
fn jwt_credentials_mint_verifiable_tokens() {
    let id = TempFile::new("jwt-id", b"zhipu-id\n");
    let secret = TempFile::new("jwt-secret", format!("{SECRET}\n").as_bytes());
    let creds = Credentials::new(&Auth::Jwt {
        id: id.secret_ref(),
        secret: secret.secret_ref(),
        ttl: Duration::from_secs(1800),
        refresh_before: Duration::from_secs(60),
    });
    let Ok(Resolved::Jwt(minter)) = creds.resolve() else {
        panic!("jwt credentials: {creds:?}")
    };
    let token = minter.token(at_ms(1_000));
    let (_, claims) = verify(&token, SECRET.as_bytes());
    assert_eq!(claims["api_key"], "zhipu-id");
    assert_eq!(creds.kind(), "jwt");
}

#[tokio::test]
async fn oauth2_credentials_fetch_with_the_request_url_and_redact_errors() {
    let id = TempFile::new("oauth-id", b"client id\n");
    let secret = TempFile::new("oauth-secret", format!("{SECRET}&x\n").as_bytes());
    let creds = Credentials::new(&Auth::OAuth2 {
        token_url: "https://aip.baidubce.com/oauth/2.0/token".into(),
        client_id: id.secret_ref(),
        client_secret: secret.secret_ref(),
        placement: TokenPlacement::Query,
    });
    let Ok(Resolved::OAuth2(client)) = creds.resolve() else {
        panic!("oauth2 credentials: {creds:?}")
    };
    let now = at_ms(0);

    // A transport error that quotes the URL (and so the secret) is redacted.
    let err = client
        .token(now, |url| async move {
            Err(AuthError::TokenFetch {
                message: format!("connect failed for {}", url.expose()),
            })
        })
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("client_secret=<redacted>"), "{text}");
    assert_no_secret(&[text, format!("{err:?}")]);

    let seen = Arc::new(parking_lot::Mutex::new(String::new()));
    let seen2 = Arc::clone(&seen);
    let token = client
        .token(now, |url| async move {
            *seen2.lock() = url.expose().to_string();
            parse_token_response(
                200,
                br#"{"access_token":"24.tok","expires_in":2592000}"#,
                now,
            )
        })
        .await
        .expect("token");
    assert_eq!(
        *seen.lock(),
        "https://aip.baidubce.com/oauth/2.0/token?grant_type=client_credentials\
         &client_id=client%20id&client_secret=sk-SECRET-9f8e7d%26x"
    );
    let mut url = String::from("https://h/chat");
    let mut headers = Vec::new();
    client.apply(&token, &mut url, &mut headers);
    assert_eq!(url, "https://h/chat?access_token=24.tok");
}

/// Every type and error of the module, formatted every way it can be, never shows the secret.
#[tokio::test]
async fn secrets_never_appear_in_debug_or_display() {
    let file = TempFile::new("sweep", format!("{SECRET}\n").as_bytes());
    let mut texts: Vec<String> = Vec::new();

    let secret = Secret::new(SECRET);
    texts.extend(debug_forms(&secret));
    texts.push(secret.to_string());

    let tok = token(SECRET, at_ms(10_000_000));
    texts.extend(debug_forms(&tok));

    let cache = TokenCache::new();
    let cached = cache
        .get(at_ms(0), || async { Ok(token(SECRET, at_ms(10_000_000))) })
        .await
        .unwrap();
    texts.extend(debug_forms(&cache));
    texts.extend(debug_forms(&cached));

    let minter = JwtMinter::new(
        Secret::new(SECRET),
        Secret::new(SECRET),
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    let jwt = minter.token(at_ms(0));
    texts.extend(debug_forms(&minter));

    let kinds = [
        Auth::None,
        Auth::Bearer {
            keys: vec![file.secret_ref()],
        },
        Auth::Jwt {
            id: file.secret_ref(),
            secret: file.secret_ref(),
            ttl: Duration::from_secs(60),
            refresh_before: Duration::from_secs(1),
        },
        Auth::OAuth2 {
            token_url: "https://h/token".into(),
            client_id: file.secret_ref(),
            client_secret: file.secret_ref(),
            placement: TokenPlacement::Header,
        },
    ];
    for auth in &kinds {
        let creds = Credentials::new(auth);
        texts.extend(debug_forms(&creds));
        let resolved = creds.resolve().expect("readable");
        if let Resolved::Jwt(m) = resolved {
            let _ = m.token(at_ms(0));
        }
        if let Resolved::OAuth2(c) = resolved {
            texts.extend(debug_forms(&c.request_url()));
            c.token(at_ms(0), |_| async { Ok(token(SECRET, at_ms(10_000_000))) })
                .await
                .unwrap();
        }
        texts.extend(debug_forms(&creds));
        texts.extend(debug_forms(resolved));
    }

    let errors = [
        resolve(&SecretRef::Env("TOLLGATE_TEST_SWEEP_UNSET".into())).unwrap_err(),
        resolve(&SecretRef::File(std::env::temp_dir())).unwrap_err(),
        parse_token_response(
            200,
            format!(r#"{{"access_token":"{SECRET}"}}"#).as_bytes(),
            at_ms(0),
        )
        .unwrap_err(),
        parse_token_response(
            200,
            format!(r#"{{"access_token":"{SECRET}","expires_in":[1]}}"#).as_bytes(),
            at_ms(0),
        )
        .unwrap_err(),
        parse_token_response(
            200,
            format!(r#"{{"access_token":{{"v":"{SECRET}"}},"expires_in":1}}"#).as_bytes(),
            at_ms(0),
        )
        .unwrap_err(),
        parse_token_response(500, format!("oops {SECRET}").as_bytes(), at_ms(0)).unwrap_err(),
        parse_token_response(200, format!("oops {SECRET}").as_bytes(), at_ms(0)).unwrap_err(),
        parse_token_response(
            400,
            format!(r#"{{"error":{{"x":"{SECRET}"}}}}"#).as_bytes(),
            at_ms(0),
        )
        .unwrap_err(),
    ];
    for err in &errors {
        texts.extend(debug_forms(err));
        texts.push(err.to_string());
    }
    assert_no_secret(&texts);
    // The minted JWT is itself a credential: no Debug shows it either.
    for text in &texts {
        assert!(!text.contains(&*jwt), "minted token leaked in: {text}");
    }
}
