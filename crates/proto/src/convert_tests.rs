use std::collections::BTreeMap;

use proptest::prelude::*;
use prost::Message;
use tidal_types::{
    AutoscalingSettings, ClusterSettings, Deployment, DeploymentId, DeploymentStatus,
    EnvironmentName, ModelId, UpdateAutoscalingResponse, UpdateAutoscalingSettings, UpdateStatus,
};

use super::ConversionError;
use crate::pb;

/// Encodes `message` and decodes it again, as a store would.
fn through_bytes<M: Message + Default>(message: &M) -> M {
    M::decode(message.encode_to_vec().as_slice()).expect("a message decodes its own encoding")
}

fn settings_all_on() -> AutoscalingSettings {
    AutoscalingSettings {
        min_replica: 2,
        max_replica: 8,
        autoscaling_window: 120,
        scale_down_delay: 0,
        concurrency_target: 4,
        target_utilization_percentage: 80,
        max_scale_down_rate: Some(25),
        target_in_flight_tokens: Some(0),
        burst_window: Some(10),
        burst_threshold_percentage: Some(300),
    }
}

fn deployment() -> Deployment {
    Deployment {
        id: DeploymentId::new("dep_1").unwrap(),
        created_at: "2025-01-02T03:04:05Z".to_owned(),
        name: "first".to_owned(),
        model_id: ModelId::new("abcd1234").unwrap(),
        is_production: true,
        is_development: false,
        status: DeploymentStatus::Active,
        active_replica_count: 3,
        autoscaling_settings: settings_all_on(),
        instance_type_name: Some("H100:1x".to_owned()),
        environment: Some(EnvironmentName::production()),
        labels: BTreeMap::from([
            ("team".to_owned(), "search".to_owned()),
            ("tier".to_owned(), "gold".to_owned()),
        ]),
    }
}

/// Domain → message → bytes → message → domain gives back `value`, and
/// message → domain → message gives back the message.
fn assert_settings_round_trip(value: AutoscalingSettings) {
    let message = pb::AutoscalingSettings::from(value);
    assert_eq!(AutoscalingSettings::from(through_bytes(&message)), value);
    assert_eq!(
        pb::AutoscalingSettings::from(AutoscalingSettings::from(message)),
        message
    );
}

fn assert_update_round_trip(value: UpdateAutoscalingSettings) {
    let message = pb::UpdateAutoscalingSettings::from(value);
    assert_eq!(
        UpdateAutoscalingSettings::from(through_bytes(&message)),
        value
    );
    assert_eq!(
        pb::UpdateAutoscalingSettings::from(UpdateAutoscalingSettings::from(message)),
        message
    );
}

fn assert_deployment_round_trip(value: &Deployment) {
    let message = pb::Deployment::from(value.clone());
    assert_eq!(
        Deployment::try_from(through_bytes(&message)).as_ref(),
        Ok(value)
    );
    let back = Deployment::try_from(message.clone()).unwrap();
    assert_eq!(pb::Deployment::from(back), message);
}

#[test]
fn settings_round_trip_with_features_off_and_on() {
    assert_settings_round_trip(AutoscalingSettings::default());
    assert_settings_round_trip(settings_all_on());
    // Zero and u32::MAX are carried as they are; ranges are validate()'s job.
    assert_settings_round_trip(AutoscalingSettings {
        max_replica: 0,
        concurrency_target: u32::MAX,
        burst_window: Some(0),
        ..AutoscalingSettings::default()
    });
}

#[test]
fn settings_features_map_to_proto_optionals() {
    let message = pb::AutoscalingSettings::from(AutoscalingSettings {
        max_scale_down_rate: Some(0),
        ..AutoscalingSettings::default()
    });
    // Some(0) is kept apart from None, even through bytes.
    assert_eq!(through_bytes(&message).max_scale_down_rate, Some(0));
    assert_eq!(through_bytes(&message).burst_window, None);
}

#[test]
fn update_distinguishes_keep_off_and_set() {
    assert_update_round_trip(UpdateAutoscalingSettings::default());
    assert_update_round_trip(UpdateAutoscalingSettings {
        min_replica: Some(0),
        max_replica: Some(5),
        autoscaling_window: Some(30),
        scale_down_delay: Some(0),
        concurrency_target: Some(2),
        target_utilization_percentage: Some(100),
        max_scale_down_rate: Some(Some(10)),
        target_in_flight_tokens: Some(Some(0)),
        burst_window: Some(Some(5)),
        burst_threshold_percentage: Some(Some(150)),
    });
    // Each feature alone: absent (keep), Some(None) (off), Some(Some) (set).
    for state in [None, Some(None), Some(Some(0)), Some(Some(7))] {
        for field in 0..4 {
            let mut update = UpdateAutoscalingSettings::default();
            *[
                &mut update.max_scale_down_rate,
                &mut update.target_in_flight_tokens,
                &mut update.burst_window,
                &mut update.burst_threshold_percentage,
            ][field] = state;
            assert_update_round_trip(update);
        }
    }
}

#[test]
fn update_features_use_the_wrapper() {
    let message = pb::UpdateAutoscalingSettings::from(UpdateAutoscalingSettings {
        max_scale_down_rate: Some(None),
        burst_window: Some(Some(9)),
        ..UpdateAutoscalingSettings::default()
    });
    let decoded = through_bytes(&message);
    assert_eq!(
        decoded.max_scale_down_rate,
        Some(pb::OptionalU32 { value: None }),
        "turning a feature off is an empty wrapper, and survives encoding"
    );
    assert_eq!(
        decoded.burst_window,
        Some(pb::OptionalU32 { value: Some(9) })
    );
    assert_eq!(decoded.target_in_flight_tokens, None);
    assert_eq!(decoded.min_replica, None);
}

#[test]
fn cluster_settings_round_trip() {
    for limit in [0, 1, 10, u32::MAX] {
        let value = ClusterSettings {
            per_deployment_replica_limit: limit,
        };
        let message = pb::ClusterSettings::from(value);
        assert_eq!(ClusterSettings::from(through_bytes(&message)), value);
        assert_eq!(
            pb::ClusterSettings::from(ClusterSettings::from(message)),
            message
        );
    }
    assert_eq!(
        pb::ClusterSettings::from(ClusterSettings::default()).per_deployment_replica_limit,
        10
    );
}

#[test]
fn every_deployment_status_round_trips_and_keeps_its_number() {
    for (i, status) in DeploymentStatus::ALL.into_iter().enumerate() {
        let message = pb::DeploymentStatus::from(status);
        // Numbers follow Baseten's order, from 1; 0 is UNSPECIFIED.
        assert_eq!(usize::try_from(i32::from(message)).unwrap(), i + 1);
        assert_eq!(DeploymentStatus::try_from(message), Ok(status));
        assert_deployment_round_trip(&Deployment {
            status,
            ..deployment()
        });
    }
}

#[test]
fn every_proto_status_but_unspecified_round_trips() {
    for number in 1..=14 {
        let message = pb::DeploymentStatus::try_from(number).unwrap();
        let status = DeploymentStatus::try_from(message).unwrap();
        assert_eq!(pb::DeploymentStatus::from(status), message);
    }
    assert!(pb::DeploymentStatus::try_from(15).is_err());
}

#[test]
fn unspecified_status_is_refused_naming_the_field() {
    assert_eq!(
        DeploymentStatus::try_from(pb::DeploymentStatus::Unspecified),
        Err(ConversionError::Unspecified {
            field: "DeploymentStatus"
        })
    );
    let mut message = pb::Deployment::from(deployment());
    message.status = 0;
    let err = Deployment::try_from(message).unwrap_err();
    assert_eq!(err.field(), "Deployment.status");
    assert_eq!(
        err.to_string(),
        "Deployment.status is unspecified (0); it must be one of its named values"
    );
}

#[test]
fn unknown_status_number_is_refused_naming_the_field() {
    let mut message = pb::Deployment::from(deployment());
    message.status = 99;
    assert_eq!(
        Deployment::try_from(message),
        Err(ConversionError::UnknownEnumValue {
            field: "Deployment.status",
            value: 99
        })
    );
}

#[test]
fn deployment_round_trips_with_and_without_optionals() {
    assert_deployment_round_trip(&deployment());
    assert_deployment_round_trip(&Deployment {
        is_production: false,
        is_development: true,
        active_replica_count: 0,
        autoscaling_settings: AutoscalingSettings::development(),
        instance_type_name: None,
        environment: None,
        labels: BTreeMap::new(),
        created_at: String::new(),
        name: String::new(),
        ..deployment()
    });
    assert_deployment_round_trip(&Deployment {
        environment: Some(EnvironmentName::new("staging").unwrap()),
        instance_type_name: Some(String::new()),
        ..deployment()
    });
}

#[test]
fn deployment_without_settings_is_refused() {
    let mut message = pb::Deployment::from(deployment());
    message.autoscaling_settings = None;
    assert_eq!(
        Deployment::try_from(message),
        Err(ConversionError::Missing {
            field: "Deployment.autoscaling_settings"
        })
    );
}

#[test]
fn invalid_ids_are_refused_naming_the_field() {
    type Spoil = fn(&mut pb::Deployment);
    let cases: [(&str, Spoil); 5] = [
        ("Deployment.id", |m| m.id = "a/b".to_owned()),
        ("Deployment.id", |m| m.id = String::new()),
        ("Deployment.model_id", |m| m.model_id = "x".repeat(65)),
        ("Deployment.environment", |m| {
            m.environment = Some("Prod".to_owned())
        }),
        ("Deployment.environment", |m| {
            m.environment = Some(String::new())
        }),
    ];
    for (field, spoil) in cases {
        let mut message = pb::Deployment::from(deployment());
        spoil(&mut message);
        let err = Deployment::try_from(message).unwrap_err();
        assert!(
            matches!(err, ConversionError::InvalidId { .. }),
            "{field}: {err:?}"
        );
        assert_eq!(err.field(), field);
    }
    let mut message = pb::Deployment::from(deployment());
    message.id = "a/b".to_owned();
    assert_eq!(
        Deployment::try_from(message).unwrap_err().to_string(),
        "Deployment.id is invalid: a deployment id must be 1 to 64 characters of letters, \
         digits, '-' and '_'; got \"a/b\""
    );
}

#[test]
fn update_response_round_trips_for_every_status() {
    for status in [
        UpdateStatus::Accepted,
        UpdateStatus::Queued,
        UpdateStatus::Unchanged,
    ] {
        assert_eq!(
            UpdateStatus::try_from(pb::UpdateStatus::from(status)),
            Ok(status)
        );
        let value = UpdateAutoscalingResponse {
            status,
            message: "autoscaling settings updated".to_owned(),
        };
        let message = pb::UpdateAutoscalingResponse::from(value.clone());
        assert_eq!(
            UpdateAutoscalingResponse::try_from(through_bytes(&message)),
            Ok(value)
        );
        let back = UpdateAutoscalingResponse::try_from(message.clone()).unwrap();
        assert_eq!(pb::UpdateAutoscalingResponse::from(back), message);
    }
}

#[test]
fn update_response_with_bad_status_is_refused_naming_the_field() {
    assert_eq!(
        UpdateStatus::try_from(pb::UpdateStatus::Unspecified),
        Err(ConversionError::Unspecified {
            field: "UpdateStatus"
        })
    );
    for (number, expected) in [
        (
            0,
            ConversionError::Unspecified {
                field: "UpdateAutoscalingResponse.status",
            },
        ),
        (
            4,
            ConversionError::UnknownEnumValue {
                field: "UpdateAutoscalingResponse.status",
                value: 4,
            },
        ),
    ] {
        let message = pb::UpdateAutoscalingResponse {
            status: number,
            message: String::new(),
        };
        assert_eq!(UpdateAutoscalingResponse::try_from(message), Err(expected));
    }
}

fn feature() -> impl Strategy<Value = Option<u32>> {
    proptest::option::of(any::<u32>())
}

fn feature_update() -> impl Strategy<Value = Option<Option<u32>>> {
    proptest::option::of(feature())
}

prop_compose! {
    fn settings()(
        core in any::<[u32; 6]>(),
        features in (feature(), feature(), feature(), feature()),
    ) -> AutoscalingSettings {
        AutoscalingSettings {
            min_replica: core[0],
            max_replica: core[1],
            autoscaling_window: core[2],
            scale_down_delay: core[3],
            concurrency_target: core[4],
            target_utilization_percentage: core[5],
            max_scale_down_rate: features.0,
            target_in_flight_tokens: features.1,
            burst_window: features.2,
            burst_threshold_percentage: features.3,
        }
    }
}

prop_compose! {
    fn update()(
        core in any::<[Option<u32>; 6]>(),
        features in (feature_update(), feature_update(), feature_update(), feature_update()),
    ) -> UpdateAutoscalingSettings {
        UpdateAutoscalingSettings {
            min_replica: core[0],
            max_replica: core[1],
            autoscaling_window: core[2],
            scale_down_delay: core[3],
            concurrency_target: core[4],
            target_utilization_percentage: core[5],
            max_scale_down_rate: features.0,
            target_in_flight_tokens: features.1,
            burst_window: features.2,
            burst_threshold_percentage: features.3,
        }
    }
}

proptest! {
    #[test]
    fn any_settings_round_trip(value in settings()) {
        let message = pb::AutoscalingSettings::from(value);
        prop_assert_eq!(AutoscalingSettings::from(through_bytes(&message)), value);
        prop_assert_eq!(pb::AutoscalingSettings::from(AutoscalingSettings::from(message)), message);
    }

    #[test]
    fn any_update_round_trips(value in update()) {
        let message = pb::UpdateAutoscalingSettings::from(value);
        prop_assert_eq!(UpdateAutoscalingSettings::from(through_bytes(&message)), value);
        prop_assert_eq!(
            pb::UpdateAutoscalingSettings::from(UpdateAutoscalingSettings::from(message)),
            message
        );
    }

    #[test]
    fn any_update_applies_the_same_after_a_round_trip(value in update(), base in settings()) {
        let back = UpdateAutoscalingSettings::from(through_bytes(&pb::UpdateAutoscalingSettings::from(value)));
        prop_assert_eq!(back.apply(&base), value.apply(&base));
    }
}
