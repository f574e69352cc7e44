//! Install test of the Rust crate: a throwaway crate that depends on the packaged `tollgate`
//! crate (unpacked from OUT/tollgate-<version>.crate) and makes a decide call.

use tollgate::{Call, Decision, Engine, Outcome, Prompt};

fn main() {
    let engine = Engine::from_text(
        r#"
        version = 1
        [[budget]]
        name = "per-tenant"
        scope = ["tenant"]
        requests_per_minute = 1
        "#,
    )
    .expect("a valid policy");
    let call = Call::new("gpt-4o")
        .tenant("acme")
        .prompt(Prompt::Text("Hello!"))
        .max_tokens(10);
    let Decision::Go(permit) = engine.admit(&call) else {
        panic!("the first call should go");
    };
    assert_eq!(permit.prompt_tokens(), 2, "o200k_base counts \"Hello!\" as two tokens");
    engine.settle(permit, &Outcome::status(200));
    match engine.admit(&call) {
        Decision::Deny(d) => assert_eq!(d.budget.as_deref(), Some("per-tenant")),
        other => panic!("the second call should be refused, got {other:?}"),
    }
    println!("rust install test: ok");
}
