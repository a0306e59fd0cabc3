//! Frozen bytes of the records `proto/tidal/v1/api.proto` defines: they are
//! persisted and replicated, so an encoding change that would break an
//! upgrade must fail here. Never edit the expected bytes.

use prost::Message;
use tidal_proto::pb;
use tidal_types::AutoscalingSettings;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn api_key_bytes_are_frozen() {
    let key = pb::ApiKey {
        id: "abcd1234".into(),
        name: "ci".into(),
        sha256: "ff".into(),
        scopes: vec!["management".into(), "inference".into()],
        created_at_ms: 1_700_000_000_000,
        revoked: true,
    };
    assert_eq!(
        hex(&key.encode_to_vec()),
        "0a086162636431323334120263691a026666220a6d616e6167656d656e742209696e666572656e63652880d095ffbc313001"
    );
}

#[test]
fn environment_bytes_are_frozen() {
    let env = pb::Environment {
        model_id: "m".into(),
        name: "staging".into(),
        created_at: "2025-01-01T00:00:00Z".into(),
        current_deployment_id: "v2".into(),
        autoscaling_settings: Some(AutoscalingSettings::default().into()),
        promotion_settings: Some(pb::PromotionSettings {
            redeploy_on_promotion: Some(false),
            ramp_up_while_promoting: Some(false),
            ramp_up_duration_seconds: Some(600),
            rolling_deploy: Some(false),
        }),
    };
    assert_eq!(
        hex(&env.encode_to_vec()),
        "0a016d120773746167696e671a14323032352d30312d30315430303a30303a30305a220276322a0b1001183c2084072801304632090800100018d8042000"
    );
}

#[test]
fn cluster_config_bytes_are_frozen() {
    let config = pb::ClusterConfig {
        max_replica_limit: 20,
        deactivate_development_after_secs: 1_209_600,
        deactivate_production_after_secs: 5_184_000,
    };
    assert_eq!(hex(&config.encode_to_vec()), "08141080ea491880b4bc02");
}
