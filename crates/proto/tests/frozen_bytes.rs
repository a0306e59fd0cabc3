//! Frozen bytes: fixed values encoded once and pasted here.
//!
//! NEVER EDIT THE EXPECTED BYTES OR THE VALUES IN THIS FILE. These messages
//! are persisted and replicated; if a change to the .proto files, to prost or
//! to the conversions makes one of these tests fail, that change would break
//! reading data written by an older tidal (an upgrade). Fix the change, not
//! the test. A new field gets a new test with its own frozen bytes.

use std::collections::BTreeMap;

use prost::Message;
use tidal_proto::pb;
use tidal_types::{
    AutoscalingSettings, ClusterSettings, Deployment, DeploymentId, DeploymentStatus,
    EnvironmentName, ModelId, UpdateAutoscalingSettings,
};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn settings() -> AutoscalingSettings {
    AutoscalingSettings {
        min_replica: 1,
        max_replica: 10,
        autoscaling_window: 60,
        scale_down_delay: 900,
        concurrency_target: 4,
        target_utilization_percentage: 70,
        max_scale_down_rate: Some(25),
        target_in_flight_tokens: None,
        burst_window: Some(0),
        burst_threshold_percentage: Some(200),
    }
}

const SETTINGS: &str = concat!(
    "0801",   // 1 min_replica = 1
    "100a",   // 2 max_replica = 10
    "183c",   // 3 autoscaling_window = 60
    "208407", // 4 scale_down_delay = 900
    "2804",   // 5 concurrency_target = 4
    "3046",   // 6 target_utilization_percentage = 70
    "3819",   // 7 max_scale_down_rate = 25
    "4800",   // 9 burst_window = 0 (present); 8 is absent
    "50c801", // 10 burst_threshold_percentage = 200
);

#[test]
fn autoscaling_settings_bytes_are_frozen() {
    let bytes = pb::AutoscalingSettings::from(settings()).encode_to_vec();
    assert_eq!(hex(&bytes), SETTINGS);
    let decoded = pb::AutoscalingSettings::decode(unhex(SETTINGS).as_slice()).unwrap();
    assert_eq!(AutoscalingSettings::from(decoded), settings());
}

fn update() -> UpdateAutoscalingSettings {
    UpdateAutoscalingSettings {
        min_replica: Some(0),
        max_replica: Some(3),
        max_scale_down_rate: Some(None),
        burst_window: Some(Some(15)),
        ..UpdateAutoscalingSettings::default()
    }
}

const UPDATE: &str = concat!(
    "0800",     // 1 min_replica = 0 (present)
    "1003",     // 2 max_replica = 3
    "3a00",     // 7 max_scale_down_rate: empty wrapper (off)
    "4a02080f", // 9 burst_window: wrapper { value = 15 }
);

#[test]
fn update_autoscaling_settings_bytes_are_frozen() {
    let bytes = pb::UpdateAutoscalingSettings::from(update()).encode_to_vec();
    assert_eq!(hex(&bytes), UPDATE);
    let decoded = pb::UpdateAutoscalingSettings::decode(unhex(UPDATE).as_slice()).unwrap();
    assert_eq!(UpdateAutoscalingSettings::from(decoded), update());
}

fn cluster() -> ClusterSettings {
    ClusterSettings {
        per_deployment_replica_limit: 300,
    }
}

const CLUSTER: &str = "08ac02"; // 1 per_deployment_replica_limit = 300

#[test]
fn cluster_settings_bytes_are_frozen() {
    let bytes = pb::ClusterSettings::from(cluster()).encode_to_vec();
    assert_eq!(hex(&bytes), CLUSTER);
    let decoded = pb::ClusterSettings::decode(unhex(CLUSTER).as_slice()).unwrap();
    assert_eq!(ClusterSettings::from(decoded), cluster());
}

fn deployment() -> Deployment {
    Deployment {
        id: DeploymentId::new("dep_7x").unwrap(),
        created_at: "2025-06-01T12:00:00Z".to_owned(),
        name: "v2".to_owned(),
        model_id: ModelId::new("abcd1234").unwrap(),
        is_production: true,
        is_development: false,
        status: DeploymentStatus::ScaledToZero,
        active_replica_count: 0,
        autoscaling_settings: settings(),
        instance_type_name: Some("A10G:1x".to_owned()),
        environment: Some(EnvironmentName::production()),
        labels: BTreeMap::from([
            ("team".to_owned(), "search".to_owned()),
            ("cost".to_owned(), "low".to_owned()),
        ]),
    }
}

// Fields 6 (is_development = false) and 8 (active_replica_count = 0) hold
// proto3 defaults and are not written.
const DEPLOYMENT: &str = concat!(
    "0a066465705f3778",                             // 1 id = "dep_7x"
    "1214323032352d30362d30315431323a30303a30305a", // 2 created_at
    "1a027632",                                     // 3 name = "v2"
    "22086162636431323334",                         // 4 model_id = "abcd1234"
    "2801",                                         // 5 is_production = true
    "380d",                                         // 7 status = SCALED_TO_ZERO
    "4a14",                                         // 9 autoscaling_settings,
    "0801100a183c208407280430463819480050c801",     //   the SETTINGS bytes
    "5207413130473a3178",                           // 10 instance_type_name
    "5a0a70726f64756374696f6e",                     // 11 environment
    "620b0a04636f737412036c6f77",                   // 12 labels: cost = low
    "620e0a047465616d1206736561726368",             // 12 labels: team = search
);

#[test]
fn deployment_bytes_are_frozen() {
    let bytes = pb::Deployment::from(deployment()).encode_to_vec();
    assert_eq!(hex(&bytes), DEPLOYMENT);
    let decoded = pb::Deployment::decode(unhex(DEPLOYMENT).as_slice()).unwrap();
    assert_eq!(Deployment::try_from(decoded), Ok(deployment()));
}

// The store's records (proto/tidal/v1/store.proto), persisted in redb.

const KEY_VALUE: &str = concat!(
    "0805",   // 1 create_revision = 5
    "10ac02", // 2 mod_revision = 300
    "1a0176", // 3 value = "v"
);

#[test]
fn store_key_value_bytes_are_frozen() {
    let kv = pb::KeyValue {
        create_revision: 5,
        mod_revision: 300,
        value: b"v".to_vec(),
    };
    assert_eq!(hex(&kv.encode_to_vec()), KEY_VALUE);
    assert_eq!(
        pb::KeyValue::decode(unhex(KEY_VALUE).as_slice()).unwrap(),
        kv
    );
}

const LEASE: &str = concat!(
    "0a0563746c2d61", // 1 holder = "ctl-a"
    "10ac02",         // 2 epoch = 300
    "1880b883a1f732", // 3 granted_at_ms = 1_750_000_000_000
    "20908684a1f732", // 4 expires_at_ms = 1_750_000_010_000
    "28904e",         // 5 ttl_ms = 10_000
);

#[test]
fn store_lease_bytes_are_frozen() {
    let lease = pb::Lease {
        holder: "ctl-a".to_owned(),
        epoch: 300,
        granted_at_ms: 1_750_000_000_000,
        expires_at_ms: 1_750_000_010_000,
        ttl_ms: 10_000,
    };
    assert_eq!(hex(&lease.encode_to_vec()), LEASE);
    assert_eq!(pb::Lease::decode(unhex(LEASE).as_slice()).unwrap(), lease);
}

const CHANGE_EVENTS: &str = concat!(
    "0a18",             // 1 events {
    "08ac02",           //   1 revision = 300
    "1005",             //   2 table = REPLICAS
    "1a027231",         //   3 key = "r1"
    "2002",             //   4 kind = DELETE
    "2a08",             //   5 value {
    "080510ab021a0176", //     create 5, mod 299, value "v" }
    "30ab02",           //   6 prev_mod_revision = 299 }
);

#[test]
fn store_change_events_bytes_are_frozen() {
    let events = pb::ChangeEvents {
        events: vec![pb::ChangeEvent {
            revision: 300,
            table: pb::StoreTable::Replicas.into(),
            key: "r1".to_owned(),
            kind: pb::change_event::Kind::Delete.into(),
            value: Some(pb::KeyValue {
                create_revision: 5,
                mod_revision: 299,
                value: b"v".to_vec(),
            }),
            prev_mod_revision: 299,
        }],
    };
    assert_eq!(hex(&events.encode_to_vec()), CHANGE_EVENTS);
    assert_eq!(
        pb::ChangeEvents::decode(unhex(CHANGE_EVENTS).as_slice()).unwrap(),
        events
    );
}
