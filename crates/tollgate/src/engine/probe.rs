//! Synthetic half-open probes: with `breaker.probe` set, users' calls never test a sick upstream;
//! the engine hands out small probe requests instead and the host (or the transport) sends them.

use std::sync::Arc;
use std::time::Duration;

use crate::retry::{BreakerPermit, BreakerState};

use std::time::Instant;

use super::Engine;
use super::health::TargetHealth;
use super::route::TargetRef;
use super::wire::exchange;
use crate::retry::is_success;

/// A probe request the engine wants sent to a half-open target. Send `request` to `target`, then
/// report with [`Engine::settle_probe`]; dropping it unsent frees its probe slot.
#[derive(Debug)]
pub struct Probe {
    /// Where to send it (upstream, model, a usable pool key).
    pub target: TargetRef,
    /// The chat-completions body: the policy's probe prompt and `max_tokens`.
    pub request: serde_json::Value,
    health: Arc<TargetHealth>,
    permit: Option<BreakerPermit>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.health.breaker.release(p);
        }
    }
}

impl Engine {
    /// The probes due now: one per free half-open probe slot of each target whose circuit is no
    /// longer open, when the policy sets `breaker.probe`. Empty without a probe policy (users'
    /// calls are the probes then).
    pub fn probes(&self) -> Vec<Probe> {
        let compiled = self.inner.current.load();
        let Some(spec) = compiled.policy.breaker.probe.clone() else {
            return vec![];
        };
        let now = compiled.clock.now();
        let routing = &compiled.routing;
        let mut out = vec![];
        let mut seen: Vec<*const TargetHealth> = vec![];
        for (r, route) in routing.routes.iter().enumerate() {
            for (i, t) in route.targets.iter().enumerate() {
                if seen.contains(&Arc::as_ptr(&t.health)) {
                    continue;
                }
                seen.push(Arc::as_ptr(&t.health));
                match t.health.breaker.state(now) {
                    BreakerState::Closed => continue,
                    BreakerState::Open { until } if now <= until => continue,
                    _ => {}
                }
                let up = &routing.upstreams[t.upstream];
                let Some(key) = up.keys.iter().find(|k| !k.quarantined(now)) else {
                    continue;
                };
                while let Ok(permit) = t.health.breaker.try_acquire(now) {
                    if !permit.is_probe() {
                        // The breaker closed meanwhile: nothing to probe.
                        t.health.breaker.release(permit);
                        break;
                    }
                    out.push(Probe {
                        target: routing.target_ref((r, i), key),
                        request: serde_json::json!({
                            "model": &*t.model,
                            "messages": [{"role": "user", "content": spec.prompt}],
                            "max_tokens": spec.max_tokens,
                        }),
                        health: Arc::clone(&t.health),
                        permit: Some(permit),
                    });
                }
            }
        }
        out
    }

    /// Reports a probe's result: enough good probes close the circuit, a bad one reopens it.
    pub fn settle_probe(&self, mut probe: Probe, success: bool, latency: Duration) {
        if let Some(p) = probe.permit.take() {
            let now = self.inner.current.load().clock.now();
            probe.health.breaker.record(p, success, latency, now);
        }
    }
}

/// How often the call API looks for due breaker probes.
const PROBE_EVERY: Duration = Duration::from_millis(100);

impl Engine {
    /// With `breaker.probe` in the policy, sends the probes that are due (at most every
    /// [`PROBE_EVERY`]) as tasks on the current runtime, so a half-open target is tested without
    /// users' calls and closes again when it has recovered.
    pub(crate) fn drive_probes(&self) {
        let compiled = self.inner.current.load();
        if compiled.policy.breaker.probe.is_none() {
            return;
        }
        let now = compiled.clock.now();
        let last = self
            .inner
            .probed_at
            .load(std::sync::atomic::Ordering::Relaxed);
        let every = u64::try_from(PROBE_EVERY.as_nanos()).unwrap_or(u64::MAX);
        if now.saturating_sub(last) < every
            || self
                .inner
                .probed_at
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        for probe in self.probes() {
            let Some(i) = compiled
                .policy
                .upstreams
                .iter()
                .position(|u| *u.name == *probe.target.upstream)
            else {
                continue;
            };
            let Ok(wire) = compiled.wires[i].get(&compiled.policy.upstreams[i]) else {
                continue;
            };
            let model = probe.target.model.to_string();
            let (Ok(body), Ok(url)) = (
                wire.speaker.body(&probe.request, None, false, false),
                wire.speaker.url(&wire.config.base_url, &model),
            ) else {
                continue;
            };
            let engine = self.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let key = probe.target.key.to_string();
                let client = &wire.client;
                let result = exchange(
                    &wire,
                    body,
                    &key,
                    None,
                    url.as_deref(),
                    false,
                    |req| client.send(req),
                    |r, wire| {
                        wire.speaker
                            .auth_expired(r.status.as_u16(), &r.headers, &r.body)
                    },
                )
                .await;
                // A probe succeeds on a 2xx that its dialect reads as a completion.
                let ok = match result {
                    Ok(Ok(r)) if r.status.is_success() => {
                        let a = wire
                            .speaker
                            .answer(r.status.as_u16(), &r.headers, r.body, &model);
                        a.error.is_none() && a.malformed.is_none() && is_success(a.status)
                    }
                    _ => false,
                };
                engine.settle_probe(probe, ok, started.elapsed());
            });
        }
    }
}
