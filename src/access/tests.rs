//! The gate without sockets: users from tokens, impersonation, rate limits
//! per user and per address, connection caps, the metrics switch, and the
//! counters by reason.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::*;
use crate::auth::{mint_hs256, Claims, Permissions, Unauthenticated, VerifyingKey};

const SECRET: &[u8] = b"streamhub-test-secret-0123456789-abcdef";
const NOW: u64 = 1_800_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn gate(limits: Limits, metrics_need_token: bool) -> Access {
    let config = AuthConfig {
        mode: AuthMode::Required,
        anonymous_subscribe: vec!["public.*".parse().unwrap()],
        ..AuthConfig::default()
    };
    let auth = Authorizer::new(&config, Some(VerifyingKey::hs256(SECRET).unwrap())).unwrap();
    Access::new(auth, limits, metrics_need_token)
}

fn token(user: &str, publish: &[&str]) -> String {
    let claims = Claims {
        sub: user.into(),
        exp: NOW + 3600,
        nbf: None,
        streamhub: Permissions {
            publish: publish.iter().map(|s| s.to_string()).collect(),
            subscribe: vec!["lobby".into()],
        },
    };
    mint_hs256(SECRET, &claims).unwrap()
}

fn user(gate: &Access, name: &str) -> Identity {
    gate.identify(Some(&token(name, &["lobby"])), now())
        .unwrap()
}

fn count(list: &[(&'static str, u64)], label: &str) -> u64 {
    list.iter()
        .find(|(l, _)| *l == label)
        .map_or(0, |(_, n)| *n)
}

#[test]
fn a_publish_with_a_token_carries_its_user_whatever_name_is_left_out() {
    let gate = gate(Limits::default(), false);
    let alice = user(&gate, "alice");
    let mut draft = Draft::chat("lobby", "", "hi");
    gate.publish(&alice, ip(1), &mut draft, now(), Instant::now())
        .unwrap();
    assert_eq!(draft.user, "alice");
    let mut same = Draft::chat("", "alice", "hi");
    let refused = gate.publish(&alice, ip(1), &mut same, now(), Instant::now());
    // "" is the default room, which the token does not grant.
    assert!(matches!(
        refused,
        Err(Refusal::Denied(Denied::Forbidden { ref room, .. })) if room == "default"
    ));
}

#[test]
fn publishing_under_another_users_name_is_refused_and_counted() {
    let gate = gate(Limits::default(), false);
    let alice = user(&gate, "alice");
    let mut draft = Draft::chat("lobby", "bob", "I am bob");
    let refused = gate
        .publish(&alice, ip(1), &mut draft, now(), Instant::now())
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "user \"bob\" is not the token's user \"alice\""
    );
    assert_eq!(count(&gate.refusals().denied, "wrong_user"), 1);
}

#[test]
fn bad_tokens_are_counted_by_reason() {
    let gate = gate(Limits::default(), false);
    assert!(gate.identify(Some("x.y.z"), now()).is_err());
    let mut forged = token("alice", &["lobby"]);
    forged.push('A');
    assert!(gate.identify(Some(&forged), now()).is_err());
    let refusals = gate.refusals();
    assert_eq!(count(&refusals.denied, "malformed"), 1);
    assert_eq!(count(&refusals.denied, "bad_signature"), 1);
    assert_eq!(refusals.denied.len(), Denied::LABELS.len());
}

#[test]
fn a_room_the_hub_would_refuse_is_left_to_the_hub() {
    let gate = gate(Limits::default(), false);
    let alice = user(&gate, "alice");
    let mut draft = Draft::chat("x".repeat(10_000), "", "hi");
    assert!(gate
        .publish(&alice, ip(1), &mut draft, now(), Instant::now())
        .is_ok());
}

#[test]
fn subscribers_get_the_tokens_expiry_and_user_and_anonymous_ones_no_presence() {
    let gate = gate(Limits::default(), false);
    let alice = user(&gate, "alice");
    let sub = gate.subscribe(&alice, "lobby", "alice", now()).unwrap();
    assert_eq!(sub.user, "alice");
    assert_eq!(
        sub.expires,
        Some(UNIX_EPOCH + Duration::from_secs(NOW + 3600) + crate::auth::DEFAULT_LEEWAY)
    );
    assert_eq!(gate.subscribe(&alice, "lobby", "", now()).unwrap().user, "");
    assert!(matches!(
        gate.subscribe(&alice, "lobby", "mallory", now()),
        Err(Refusal::Denied(Denied::WrongUser { .. }))
    ));
    let anonymous = gate.identify(None, now()).unwrap();
    let open = gate
        .subscribe(&anonymous, "public.news", "", now())
        .unwrap();
    assert_eq!((open.user.as_str(), open.expires), ("", None));
    assert!(matches!(
        gate.subscribe(&anonymous, "public.news", "alice", now()),
        Err(Refusal::Denied(Denied::Unauthenticated(
            Unauthenticated::Missing
        )))
    ));
    assert!(matches!(
        gate.subscribe(&anonymous, "lobby", "", now()),
        Err(Refusal::Denied(Denied::Unauthenticated(
            Unauthenticated::Missing
        )))
    ));
}

#[test]
fn the_publish_rate_is_per_user_with_a_token_and_per_address_without() {
    let limits = Limits {
        publish: Quota::new(1.0, 2),
        ..Limits::default()
    };
    let config = AuthConfig::default();
    let open = Access::new(
        Authorizer::new(&config, None).unwrap(),
        limits.clone(),
        false,
    );
    let clock = Instant::now();
    let publish = |gate: &Access, who: &Identity, from: IpAddr| {
        let mut draft = Draft::chat("lobby", "", "hi");
        gate.publish(who, from, &mut draft, now(), clock)
    };
    // Auth off: by address.
    assert!(publish(&open, &Identity::Open, ip(1)).is_ok());
    assert!(publish(&open, &Identity::Open, ip(1)).is_ok());
    assert!(matches!(
        publish(&open, &Identity::Open, ip(1)),
        Err(Refusal::Limited { limit: Limit::Publish, retry_after })
            if retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1)
    ));
    assert!(publish(&open, &Identity::Open, ip(2)).is_ok());
    assert_eq!(count(&open.refusals().limited, "publish_rate"), 1);
    // With tokens: by user, whatever the address.
    let gate = gate(limits, false);
    let (alice, bob) = (user(&gate, "alice"), user(&gate, "bob"));
    assert!(publish(&gate, &alice, ip(1)).is_ok());
    assert!(publish(&gate, &alice, ip(2)).is_ok());
    assert!(publish(&gate, &alice, ip(3)).is_err());
    assert!(publish(&gate, &bob, ip(1)).is_ok());
}

#[test]
fn a_limited_publish_says_when_to_retry() {
    let gate = Access::new(
        Authorizer::new(&AuthConfig::default(), None).unwrap(),
        Limits {
            publish: Quota::new(0.5, 1),
            ..Limits::default()
        },
        false,
    );
    let clock = Instant::now();
    let mut draft = Draft::chat("lobby", "u", "hi");
    gate.publish(&Identity::Open, ip(1), &mut draft, now(), clock)
        .unwrap();
    let refused = gate
        .publish(&Identity::Open, ip(1), &mut draft, now(), clock)
        .unwrap_err();
    assert_eq!(
        refused,
        Refusal::Limited {
            limit: Limit::Publish,
            retry_after: Duration::from_secs(2)
        }
    );
    assert_eq!(
        refused.to_string(),
        "publish rate limit reached; retry in 2 s"
    );
    // Two seconds later it is allowed again.
    gate.publish(
        &Identity::Open,
        ip(1),
        &mut draft,
        now(),
        clock + Duration::from_secs(2),
    )
    .unwrap();
}

#[test]
fn open_connections_are_capped_per_address_and_port_and_freed_on_drop() {
    let gate = gate(
        Limits {
            connections_per_address: 2,
            ..Limits::default()
        },
        false,
    );
    let t = Instant::now();
    let a = gate.admit(Door::Http, ip(1), t).unwrap();
    let _b = gate.admit(Door::Http, ip(1), t).unwrap();
    assert!(matches!(
        gate.admit(Door::Http, ip(1), t),
        Err(Refusal::Limited {
            limit: Limit::Connections,
            ..
        })
    ));
    // Another address, and the other port, have their own counts.
    assert!(gate.admit(Door::Http, ip(2), t).is_ok());
    assert!(gate.admit(Door::Grpc, ip(1), t).is_ok());
    drop(a);
    assert!(gate.admit(Door::Http, ip(1), t).is_ok());
    assert_eq!(
        count(&gate.refusals().limited, "connections_per_address"),
        1
    );
}

#[test]
fn new_connections_per_second_are_limited_per_address() {
    let gate = gate(
        Limits {
            connect: Quota::new(10.0, 3),
            ..Limits::default()
        },
        false,
    );
    let t = Instant::now();
    for _ in 0..3 {
        drop(gate.admit(Door::Grpc, ip(1), t).unwrap());
    }
    let refused = gate.admit(Door::Http, ip(1), t).unwrap_err();
    assert_eq!(
        refused,
        Refusal::Limited {
            limit: Limit::Connect,
            retry_after: Duration::from_millis(100)
        }
    );
    assert!(gate.admit(Door::Http, ip(2), t).is_ok());
    assert!(gate
        .admit(Door::Http, ip(1), t + Duration::from_millis(100))
        .is_ok());
}

#[test]
fn measurements_need_a_token_only_with_the_switch() {
    let open = gate(Limits::default(), false);
    let anonymous = open.identify(None, now()).unwrap();
    assert!(open.measurements(&anonymous).is_ok());
    let closed = gate(Limits::default(), true);
    assert!(closed.measurements(&anonymous).is_err());
    assert!(closed.measurements(&user(&closed, "alice")).is_ok());
}

#[test]
fn a_connections_token_is_verified_once_and_its_expiry_still_checked() {
    let gate = gate(Limits::default(), false);
    let mut known = KnownToken::default();
    let alice = token("alice", &["lobby"]);
    let first = gate.identify_on(&mut known, Some(&alice), now()).unwrap();
    let again = gate.identify_on(&mut known, Some(&alice), now()).unwrap();
    assert!(Arc::ptr_eq(&first, &again), "verified once");
    let bob = gate
        .identify_on(&mut known, Some(&token("bob", &["lobby"])), now())
        .unwrap();
    assert!(matches!(&*bob, Identity::User(t) if t.user() == "bob"));
    // A bad token is not remembered: it is refused each time.
    assert!(gate.identify_on(&mut known, Some("x.y.z"), now()).is_err());
    assert!(gate.identify_on(&mut known, Some("x.y.z"), now()).is_err());
    assert_eq!(count(&gate.refusals().denied, "malformed"), 2);
    // Past its expiry the remembered identity publishes nothing.
    let cached = gate.identify_on(&mut known, Some(&alice), now()).unwrap();
    let later = now() + Duration::from_secs(7200);
    let mut draft = Draft::chat("lobby", "", "late");
    assert!(matches!(
        gate.publish(&cached, ip(1), &mut draft, later, Instant::now()),
        Err(Refusal::Denied(Denied::Unauthenticated(
            Unauthenticated::Expired
        )))
    ));
}
