//! A micro measurement for issue 10's closing note: listing and kicking 10,000 connections.
//! It prints timings and asserts only the counts (timings depend on the machine and build).
// Measuring wall-clock time is the point here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::Instant;

use http_body_util::BodyExt;
use wsgate::registry::{Registry, StopReason, TunnelInfo};
use wsgate::users::{Stop, Users};

const N: usize = 10_000;

#[tokio::test]
async fn time_to_list_and_kick_10000_connections() {
    let registry = Registry::new();
    let users = Users::new();
    let gauge = prometheus::IntGauge::new("t", "t").unwrap();
    let mut held = Vec::with_capacity(N);
    for i in 0..N {
        // Half the connections belong to one user, the rest to one user each.
        let user = if i % 2 == 0 {
            "heavy".to_string()
        } else {
            format!("user-{i}")
        };
        let info = Arc::new(TunnelInfo::new(
            registry.next_id(),
            "/chat".into(),
            Some(user.clone()),
            [10, 0, (i >> 8) as u8, i as u8].into(),
        ));
        let slot = users.reserve("/chat", &user, None, gauge.clone()).unwrap();
        let listed = registry.insert(info.clone());
        slot.attach(&info);
        held.push((listed, slot, info));
    }

    let started = Instant::now();
    let resp = wsgate::admin_api::list_connections(registry.clone(), None, None);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let list_time = started.elapsed();
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(parsed["connections"].as_array().unwrap().len(), N);

    let started = Instant::now();
    let resp = wsgate::admin_api::list_users(users.clone(), None);
    let users_body = resp.into_body().collect().await.unwrap().to_bytes();
    let users_time = started.elapsed();

    let started = Instant::now();
    let kicked = users.stop_user("heavy", &Stop::plain(StopReason::Kicked));
    let kick_user_time = started.elapsed();
    assert_eq!(kicked, Some(N / 2));

    let started = Instant::now();
    let mut by_id = 0;
    for (_, _, info) in held.iter().filter(|(_, _, t)| t.stop_reason().is_none()) {
        if let Some(t) = registry.get(info.id) {
            t.stop(StopReason::Kicked);
            by_id += 1;
        }
    }
    let kick_ids_time = started.elapsed();
    assert_eq!(by_id, N / 2);

    let started = Instant::now();
    drop(held);
    let release_time = started.elapsed();
    assert!(registry.is_empty());
    assert_eq!(gauge.get(), 0);

    println!(
        "{N} connections ({} build): GET /connections body {} KiB in {list_time:?}; \
         GET /users ({} users) {} KiB in {users_time:?}; \
         DELETE /users/heavy ({} connections) in {kick_user_time:?}; \
         {} kicks by id in {kick_ids_time:?}; releasing all {N} in {release_time:?}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        body.len() / 1024,
        N / 2 + 1,
        users_body.len() / 1024,
        N / 2,
        N / 2,
    );
}
