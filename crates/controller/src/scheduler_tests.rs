//! Table tests for the scheduler: each row is a small scenario and the whole expected plan.

use super::*;

const GIB: u64 = 1 << 30;

/// `value` after `change`: keeps table rows to one line each.
fn with<T>(mut value: T, change: impl FnOnce(&mut T)) -> T {
    change(&mut value);
    value
}

/// `replica` with its stop requested.
fn stopping(replica: ReplicaState) -> ReplicaState {
    with(replica, |r| r.stop_requested = true)
}

/// A CPU-only worker in us-west: 16 cores, 64 GiB, live, schedulable, nothing cached.
fn w(id: &str) -> Worker {
    Worker {
        id: id.into(),
        region: "us-west".into(),
        gpu_type: None,
        gpus: 0,
        cpu_millis: 16_000,
        memory_bytes: 64 * GIB,
        live: true,
        schedulable: true,
        cached_images: BTreeSet::new(),
        cached_weights: BTreeSet::new(),
    }
}

fn gpu_w(id: &str, gpu_type: &str, gpus: u32) -> Worker {
    Worker {
        gpu_type: Some(gpu_type.into()),
        gpus,
        ..w(id)
    }
}

/// `w` with image `img` and weights `llama` cached.
fn warm(worker: Worker) -> Worker {
    Worker {
        cached_images: ["img".to_owned()].into(),
        cached_weights: ["llama".to_owned()].into(),
        ..worker
    }
}

/// One core, 4 GiB, image `img`, weights `llama`, anywhere, no GPU.
fn req() -> Requirements {
    Requirements {
        region: None,
        gpu_type: None,
        gpu_count: 0,
        cpu_millis: 1_000,
        memory_bytes: 4 * GIB,
        image: "img".into(),
        weights: vec!["llama".into()],
    }
}

fn gpu_req(gpu_type: &str, gpu_count: u32) -> Requirements {
    Requirements {
        gpu_type: Some(gpu_type.into()),
        gpu_count,
        ..req()
    }
}

fn dep(id: &str, desired: u32, max_replica: u32, requirements: Requirements) -> DeploymentState {
    DeploymentState {
        id: id.into(),
        desired,
        max_replica,
        requirements,
    }
}

/// A replica holding one core and 4 GiB, no GPU.
fn rep(id: &str, deployment: &str, worker: &str, phase: Phase) -> ReplicaState {
    ReplicaState {
        id: id.into(),
        deployment: deployment.into(),
        worker: worker.into(),
        phase,
        stop_requested: false,
        gpus: 0,
        cpu_millis: 1_000,
        memory_bytes: 4 * GIB,
    }
}

fn gpu_rep(id: &str, deployment: &str, worker: &str, gpus: u32) -> ReplicaState {
    ReplicaState {
        gpus,
        ..rep(id, deployment, worker, Ready)
    }
}

fn place(deployment: &str, worker: &str, gpus: u32) -> Command {
    Command::Place {
        deployment: deployment.into(),
        worker: worker.into(),
        gpus,
    }
}

fn stop(replica: &str, reason: StopReason) -> Command {
    Command::Stop {
        replica: replica.into(),
        reason,
    }
}

fn lost(replica: &str) -> Command {
    Command::MarkLost {
        replica: replica.into(),
    }
}

fn short(deployment: &str, missing: u32, reason: &str) -> Unplaceable {
    Unplaceable {
        deployment: deployment.into(),
        missing,
        reason: reason.into(),
    }
}

#[derive(Default)]
struct Case {
    name: &'static str,
    deployments: Vec<DeploymentState>,
    workers: Vec<Worker>,
    replicas: Vec<ReplicaState>,
    commands: Vec<Command>,
    unplaceable: Vec<Unplaceable>,
}

fn check(cases: Vec<Case>) {
    for case in cases {
        let got = plan(&case.deployments, &case.workers, &case.replicas);
        let want = Plan {
            commands: case.commands,
            unplaceable: case.unplaceable,
        };
        assert_eq!(got, want, "case: {}", case.name);
    }
}

use Phase::*;
use StopReason::*;

#[test]
fn placement() {
    check(vec![
        Case {
            name: "a 2-GPU replica skips a worker with 1 free GPU",
            deployments: vec![dep("d", 1, 5, gpu_req("H100", 2)), dep("x", 1, 1, req())],
            workers: vec![gpu_w("a", "H100", 2), gpu_w("b", "H100", 4)],
            replicas: vec![gpu_rep("x1", "x", "a", 1)],
            commands: vec![place("d", "b", 2)],
            ..Case::default()
        },
        Case {
            name: "the wrong GPU type is refused",
            deployments: vec![dep("d", 1, 5, gpu_req("H100", 1))],
            workers: vec![gpu_w("a", "A100", 8), gpu_w("b", "H100", 8)],
            commands: vec![place("d", "b", 1)],
            ..Case::default()
        },
        Case {
            name: "region is honoured",
            deployments: vec![dep(
                "d",
                1,
                5,
                with(req(), |r| r.region = Some("us-east".into())),
            )],
            workers: vec![w("a"), with(w("b"), |w| w.region = "us-east".into())],
            commands: vec![place("d", "b", 0)],
            ..Case::default()
        },
        Case {
            name: "not enough CPU free on the first worker",
            deployments: vec![dep("d", 1, 5, req()), dep("x", 1, 1, req())],
            workers: vec![
                with(w("a"), |w| w.cpu_millis = 1_500),
                with(w("b"), |w| w.cpu_millis = 2_000),
            ],
            replicas: vec![rep("x1", "x", "a", Ready)],
            commands: vec![place("d", "b", 0)],
            ..Case::default()
        },
        Case {
            name: "not enough memory on the first worker",
            deployments: vec![dep("d", 1, 5, req())],
            workers: vec![with(w("a"), |w| w.memory_bytes = 2 * GIB), w("b")],
            commands: vec![place("d", "b", 0)],
            ..Case::default()
        },
        Case {
            name: "warm CPU worker beats a cold one with more free CPU",
            deployments: vec![dep("d", 1, 5, req())],
            workers: vec![
                with(w("a"), |w| w.cpu_millis = 64_000),
                warm(with(w("b"), |w| w.cpu_millis = 4_000)),
            ],
            commands: vec![place("d", "b", 0)],
            ..Case::default()
        },
        Case {
            name: "warm GPU worker beats a cold tighter fit",
            deployments: vec![dep("d", 1, 5, gpu_req("H100", 2))],
            workers: vec![gpu_w("a", "H100", 2), warm(gpu_w("b", "H100", 8))],
            commands: vec![place("d", "b", 2)],
            ..Case::default()
        },
        Case {
            name: "image and weights beat image only beat nothing",
            deployments: vec![dep("d", 1, 5, req())],
            workers: vec![
                w("a"),
                with(w("b"), |w| w.cached_images = ["img".to_owned()].into()),
                warm(with(w("c"), |w| w.cpu_millis = 2_000)),
            ],
            commands: vec![place("d", "c", 0)],
            ..Case::default()
        },
        Case {
            name: "GPU replicas pack onto the tightest fit",
            deployments: vec![dep("d", 1, 5, gpu_req("H100", 2))],
            workers: vec![
                gpu_w("a", "H100", 8),
                gpu_w("b", "H100", 4),
                gpu_w("c", "H100", 2),
            ],
            commands: vec![place("d", "c", 2)],
            ..Case::default()
        },
        Case {
            name: "CPU-only replicas stay off GPU workers",
            deployments: vec![dep("d", 1, 5, req())],
            workers: vec![gpu_w("a", "H100", 8), w("b")],
            commands: vec![place("d", "b", 0)],
            ..Case::default()
        },
        Case {
            name: "3 replicas spread over 3 workers rather than packing",
            deployments: vec![dep("d", 3, 5, gpu_req("H100", 1))],
            workers: vec![
                gpu_w("a", "H100", 8),
                gpu_w("b", "H100", 8),
                gpu_w("c", "H100", 8),
            ],
            commands: vec![place("d", "a", 1), place("d", "b", 1), place("d", "c", 1)],
            ..Case::default()
        },
        Case {
            name: "spreading counts existing replicas",
            deployments: vec![dep("d", 3, 5, req())],
            workers: vec![w("a"), w("b"), w("c")],
            replicas: vec![rep("d1", "d", "a", Ready)],
            commands: vec![place("d", "b", 0), place("d", "c", 0)],
            ..Case::default()
        },
        Case {
            name: "stacks on one worker when it is the only one",
            deployments: vec![dep("d", 2, 5, gpu_req("H100", 2))],
            workers: vec![gpu_w("a", "H100", 4)],
            commands: vec![place("d", "a", 2), place("d", "a", 2)],
            ..Case::default()
        },
        Case {
            name: "cordoned and dead workers get nothing",
            deployments: vec![dep("d", 1, 5, req())],
            workers: vec![
                with(w("a"), |w| w.schedulable = false),
                with(w("b"), |w| w.live = false),
                w("c"),
            ],
            commands: vec![place("d", "c", 0)],
            ..Case::default()
        },
        Case {
            name: "placements earlier in the plan use capacity",
            deployments: vec![
                dep("d1", 1, 5, gpu_req("H100", 2)),
                dep("d2", 1, 5, gpu_req("H100", 2)),
            ],
            workers: vec![gpu_w("a", "H100", 2), gpu_w("b", "H100", 4)],
            commands: vec![place("d1", "a", 2), place("d2", "b", 2)],
            ..Case::default()
        },
        Case {
            name: "stop-requested replicas hold capacity but do not count",
            deployments: vec![dep("d", 1, 5, gpu_req("H100", 2))],
            workers: vec![gpu_w("a", "H100", 2), gpu_w("b", "H100", 4)],
            replicas: vec![stopping(with(gpu_rep("d1", "d", "a", 2), |r| {
                r.phase = Draining
            }))],
            commands: vec![place("d", "b", 2)],
            ..Case::default()
        },
        Case {
            name: "terminal replicas hold nothing and do not count",
            deployments: vec![dep("d", 1, 5, gpu_req("H100", 2))],
            workers: vec![gpu_w("a", "H100", 2)],
            replicas: vec![with(gpu_rep("d1", "d", "a", 2), |r| r.phase = Failed)],
            commands: vec![place("d", "a", 2)],
            ..Case::default()
        },
    ]);
}

#[test]
fn scaling_down_and_limits() {
    check(vec![
        Case {
            name: "at target: nothing to do",
            deployments: vec![dep("d", 1, 5, req())],
            workers: vec![w("a")],
            replicas: vec![rep("d1", "d", "a", Ready)],
            ..Case::default()
        },
        Case {
            name: "scale down stops replicas not yet ready first, then the highest id",
            deployments: vec![dep("d", 1, 5, req())],
            workers: vec![w("a"), w("b"), w("c")],
            replicas: vec![
                rep("d1", "d", "a", Ready),
                rep("d2", "d", "b", Loading),
                rep("d3", "d", "c", Ready),
            ],
            commands: vec![stop("d2", ScaleDown), stop("d3", ScaleDown)],
            ..Case::default()
        },
        Case {
            name: "scale down undoes crowding, recounting after each stop",
            deployments: vec![dep("d", 3, 5, req())],
            workers: vec![w("a"), w("b")],
            replicas: vec![
                rep("d1", "d", "a", Ready),
                rep("d2", "d", "a", Ready),
                rep("d3", "d", "a", Ready),
                rep("d4", "d", "b", Ready),
                rep("d5", "d", "b", Ready),
            ],
            commands: vec![stop("d3", ScaleDown), stop("d5", ScaleDown)],
            ..Case::default()
        },
        Case {
            name: "desired 5, max 3: places only up to max",
            deployments: vec![dep("d", 5, 3, req())],
            workers: vec![w("a"), w("b"), w("c")],
            replicas: vec![rep("d1", "d", "a", Ready)],
            commands: vec![place("d", "b", 0), place("d", "c", 0)],
            ..Case::default()
        },
        Case {
            name: "over max_replica: stop with OverMax",
            deployments: vec![dep("d", 5, 3, req())],
            workers: vec![w("a"), w("b")],
            replicas: vec![
                rep("d1", "d", "a", Ready),
                rep("d2", "d", "a", Ready),
                rep("d3", "d", "b", Ready),
                rep("d4", "d", "b", Ready),
            ],
            commands: vec![stop("d4", OverMax)],
            ..Case::default()
        },
        Case {
            name: "stop-requested replicas are not stopped again nor replaced twice",
            deployments: vec![dep("d", 1, 5, req())],
            workers: vec![w("a")],
            replicas: vec![
                stopping(rep("d1", "d", "a", Draining)),
                rep("d2", "d", "a", Ready),
            ],
            ..Case::default()
        },
        Case {
            name: "deployment gone: stop its active replicas only",
            deployments: vec![dep("d", 1, 5, req())],
            workers: vec![w("a")],
            replicas: vec![
                rep("d1", "d", "a", Ready),
                rep("old1", "old", "a", Ready),
                stopping(rep("old2", "old", "a", Draining)),
                rep("old3", "old", "a", Stopped),
                rep("old4", "old", "a", Pending),
            ],
            commands: vec![stop("old1", DeploymentGone), stop("old4", DeploymentGone)],
            ..Case::default()
        },
    ]);
}

#[test]
fn lost_replicas() {
    check(vec![
        Case {
            name: "worker not live: MarkLost and replace elsewhere",
            deployments: vec![dep("d", 1, 5, gpu_req("H100", 1))],
            workers: vec![
                with(gpu_w("a", "H100", 8), |w| w.live = false),
                gpu_w("b", "H100", 8),
            ],
            replicas: vec![gpu_rep("d1", "d", "a", 1)],
            commands: vec![lost("d1"), place("d", "b", 1)],
            ..Case::default()
        },
        Case {
            name: "worker missing: MarkLost, even when stop was requested",
            deployments: vec![dep("d", 1, 5, req())],
            workers: vec![w("b")],
            replicas: vec![
                rep("d1", "d", "gone", Ready),
                stopping(rep("d2", "d", "gone", Draining)),
            ],
            commands: vec![lost("d1"), lost("d2"), place("d", "b", 0)],
            ..Case::default()
        },
        Case {
            name: "terminal replicas on a dead worker are left alone",
            deployments: vec![dep("d", 0, 5, req())],
            workers: vec![with(w("a"), |w| w.live = false)],
            replicas: vec![rep("d1", "d", "a", Stopped), rep("d2", "d", "a", Lost)],
            ..Case::default()
        },
        Case {
            name: "MarkLost first by replica id, then per deployment stops then places",
            deployments: vec![dep("e", 2, 5, req()), dep("f", 0, 5, req())],
            workers: vec![with(w("a"), |w| w.live = false), w("b")],
            replicas: vec![
                rep("z1", "e", "a", Ready),
                rep("f1", "f", "b", Ready),
                rep("g1", "gone", "b", Ready),
                rep("a1", "f", "a", Ready),
            ],
            commands: vec![
                lost("a1"),
                lost("z1"),
                place("e", "b", 0),
                place("e", "b", 0),
                stop("f1", ScaleDown),
                stop("g1", DeploymentGone),
            ],
            ..Case::default()
        },
    ]);
}

#[test]
fn unplaceable_reasons() {
    check(vec![
        Case {
            name: "no live worker in the region",
            deployments: vec![dep(
                "d",
                2,
                5,
                with(req(), |r| r.region = Some("us-east".into())),
            )],
            workers: vec![
                w("a"),
                with(w("b"), |w| (w.region, w.live) = ("us-east".into(), false)),
            ],
            unplaceable: vec![short(
                "d",
                2,
                "no live, schedulable worker in region us-east",
            )],
            ..Case::default()
        },
        Case {
            name: "no live worker at all",
            deployments: vec![dep("d", 1, 5, req())],
            workers: vec![with(w("a"), |w| w.schedulable = false)],
            unplaceable: vec![short("d", 1, "no live, schedulable worker")],
            ..Case::default()
        },
        Case {
            name: "no worker of the GPU type",
            deployments: vec![dep("d", 1, 5, gpu_req("H100", 1))],
            workers: vec![gpu_w("a", "A100", 8), w("b")],
            unplaceable: vec![short(
                "d",
                1,
                "no live, schedulable worker has GPU type H100",
            )],
            ..Case::default()
        },
        Case {
            name: "no GPU worker at all for an untyped GPU request",
            deployments: vec![dep("d", 1, 5, with(req(), |r| r.gpu_count = 1))],
            workers: vec![w("a")],
            unplaceable: vec![short("d", 1, "no live, schedulable worker has GPUs")],
            ..Case::default()
        },
        Case {
            name: "no worker large enough",
            deployments: vec![dep("d", 1, 5, gpu_req("H100", 4))],
            workers: vec![gpu_w("a", "H100", 2), gpu_w("b", "A100", 8)],
            unplaceable: vec![short(
                "d",
                1,
                "needs 4 × H100 on one worker; the largest matching worker has 2",
            )],
            ..Case::default()
        },
        Case {
            name: "not enough GPUs free",
            deployments: vec![dep("d", 1, 5, gpu_req("H100", 4)), dep("x", 1, 1, req())],
            workers: vec![gpu_w("a", "H100", 8)],
            replicas: vec![gpu_rep("x1", "x", "a", 6)],
            unplaceable: vec![short(
                "d",
                1,
                "needs 4 × H100 on one worker; the most free on any matching worker is 2",
            )],
            ..Case::default()
        },
        Case {
            name: "not enough CPU or memory",
            deployments: vec![dep(
                "d",
                1,
                5,
                with(req(), |r| {
                    (r.cpu_millis, r.memory_bytes) = (4_000, 32 * GIB)
                }),
            )],
            workers: vec![
                with(w("a"), |w| {
                    (w.cpu_millis, w.memory_bytes) = (8_000, 16 * GIB)
                }),
                with(w("b"), |w| w.cpu_millis = 2_000),
            ],
            unplaceable: vec![short(
                "d",
                1,
                "not enough CPU or memory free on any matching worker: needs 4000m CPU and 32 GiB \
                 memory on one worker; the most free CPU on any is 8000m and the most free memory 64 GiB",
            )],
            ..Case::default()
        },
        Case {
            name: "some fit, the rest are reported",
            deployments: vec![dep("d", 3, 5, gpu_req("H100", 4))],
            workers: vec![gpu_w("a", "H100", 8)],
            commands: vec![place("d", "a", 4), place("d", "a", 4)],
            unplaceable: vec![short(
                "d",
                1,
                "needs 4 × H100 on one worker; the most free on any matching worker is 0",
            )],
            ..Case::default()
        },
        Case {
            name: "two deployments compete for one worker's GPUs; the first id wins",
            deployments: vec![
                dep("d2", 1, 5, gpu_req("H100", 2)),
                dep("d1", 1, 5, gpu_req("H100", 3)),
            ],
            workers: vec![gpu_w("a", "H100", 4)],
            commands: vec![place("d1", "a", 3)],
            unplaceable: vec![short(
                "d2",
                1,
                "needs 2 × H100 on one worker; the most free on any matching worker is 1",
            )],
            ..Case::default()
        },
    ]);
}

/// A small seeded generator (xorshift64), so property runs replay exactly.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        u32::try_from(self.0 % u64::from(n)).unwrap_or(0)
    }
}

fn scenario(rng: &mut Rng) -> (Vec<DeploymentState>, Vec<Worker>, Vec<ReplicaState>) {
    const TYPES: [&str; 2] = ["H100", "A100"];
    const REGIONS: [&str; 2] = ["us-west", "us-east"];
    const PHASES: [Phase; 9] = [
        Pending, Fetching, Starting, Loading, Ready, Draining, Stopped, Failed, Lost,
    ];
    let workers: Vec<Worker> = (0..2 + rng.below(5))
        .map(|i| Worker {
            region: REGIONS[rng.below(2) as usize].into(),
            live: rng.below(6) > 0,
            schedulable: rng.below(6) > 0,
            cached_images: if rng.below(2) == 0 {
                ["img".to_owned()].into()
            } else {
                BTreeSet::new()
            },
            cpu_millis: 1_000 * (1 + rng.below(8)),
            ..gpu_w(&format!("w{i}"), TYPES[rng.below(2) as usize], rng.below(9))
        })
        .collect();
    let deployments: Vec<DeploymentState> = (0..1 + rng.below(4))
        .map(|i| {
            let requirements = Requirements {
                region: (rng.below(3) == 0).then(|| REGIONS[rng.below(2) as usize].into()),
                gpu_type: (rng.below(2) == 0).then(|| TYPES[rng.below(2) as usize].into()),
                gpu_count: rng.below(4),
                cpu_millis: 500 * (1 + rng.below(4)),
                ..req()
            };
            dep(
                &format!("d{i}"),
                rng.below(6),
                1 + rng.below(4),
                requirements,
            )
        })
        .collect();
    let replicas = (0..rng.below(10))
        .map(|i| ReplicaState {
            phase: PHASES[rng.below(9) as usize],
            stop_requested: rng.below(4) == 0,
            gpus: rng.below(3),
            cpu_millis: 500,
            ..rep(
                &format!("r{i}"),
                &format!("d{}", rng.below(5)),
                &format!("w{}", rng.below(7)),
                Ready,
            )
        })
        .collect();
    (deployments, workers, replicas)
}

/// GPUs, CPU and memory as signed numbers, so a replay can go below zero.
fn amounts(gpus: u32, cpu_millis: u32, memory_bytes: u64) -> [i128; 3] {
    [gpus.into(), cpu_millis.into(), memory_bytes.into()]
}

fn rev<T: Clone>(items: &[T]) -> Vec<T> {
    items.iter().rev().cloned().collect()
}

#[test]
fn same_inputs_same_plan_whatever_their_order() {
    let mut rng = Rng(0x0dd5_eed5);
    for round in 0..500 {
        let (deployments, workers, replicas) = scenario(&mut rng);
        let got = plan(&deployments, &workers, &replicas);
        assert_eq!(
            got,
            plan(&deployments, &workers, &replicas),
            "round {round}"
        );
        let reversed = plan(&rev(&deployments), &rev(&workers), &rev(&replicas));
        assert_eq!(got, reversed, "round {round}: input order changed the plan");
    }
}

/// Replays each random plan against the inputs: placements fit, targets are met or reported.
#[test]
fn random_plans_respect_capacity_and_targets() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for round in 0..2_000 {
        let (deployments, workers, replicas) = scenario(&mut rng);
        let got = plan(&deployments, &workers, &replicas);
        let worker = |id: &str| workers.iter().find(|w| w.id == id);
        let is_live = |id: &str| worker(id).is_some_and(|w| w.live);
        let replica = |id: &str| replicas.iter().find(|r| r.id == id).expect("known replica");

        // Free [GPUs, CPU, memory] per worker (negative if overcommitted) and active counts.
        let mut free: BTreeMap<&str, [i128; 3]> = BTreeMap::new();
        for w in &workers {
            free.insert(&w.id, amounts(w.gpus, w.cpu_millis, w.memory_bytes));
        }
        let mut active: BTreeMap<&str, u32> = BTreeMap::new();
        for r in replicas
            .iter()
            .filter(|r| !r.phase.is_terminal() && is_live(&r.worker))
        {
            let held = amounts(r.gpus, r.cpu_millis, r.memory_bytes);
            let slot = free.get_mut(r.worker.as_str()).expect("live worker");
            slot.iter_mut().zip(held).for_each(|(f, h)| *f -= h);
            if !r.stop_requested {
                *active.entry(&r.deployment).or_default() += 1;
            }
        }

        for command in &got.commands {
            match command {
                Command::MarkLost { replica: id } => {
                    assert!(
                        !is_live(&replica(id).worker),
                        "round {round}: {id} not lost"
                    );
                }
                Command::Stop { replica: id, .. } => {
                    *active
                        .get_mut(replica(id).deployment.as_str())
                        .expect("active") -= 1;
                }
                Command::Place {
                    deployment,
                    worker: on,
                    gpus,
                } => {
                    let d = deployments
                        .iter()
                        .find(|d| d.id == *deployment)
                        .expect("known");
                    let (req, w) = (&d.requirements, worker(on).expect("known worker"));
                    assert!(w.live && w.schedulable, "round {round}: {on} unusable");
                    assert!(
                        req.region.as_ref().is_none_or(|r| *r == w.region),
                        "round {round}"
                    );
                    let typed = req
                        .gpu_type
                        .as_ref()
                        .is_none_or(|t| w.gpu_type.as_ref() == Some(t));
                    assert!(req.gpu_count == 0 || typed, "round {round}: wrong GPU type");
                    assert_eq!(*gpus, req.gpu_count, "round {round}");
                    let need = amounts(req.gpu_count, req.cpu_millis, req.memory_bytes);
                    for (f, n) in free
                        .get_mut(on.as_str())
                        .expect("known")
                        .iter_mut()
                        .zip(need)
                    {
                        *f -= n;
                        assert!(n == 0 || *f >= 0, "round {round}: {on} over capacity");
                    }
                    *active.entry(deployment).or_default() += 1;
                }
            }
        }

        for d in &deployments {
            let after = active.get(d.id.as_str()).copied().unwrap_or(0);
            let missing: u32 = got
                .unplaceable
                .iter()
                .filter(|u| u.deployment == d.id)
                .map(|u| u.missing)
                .sum();
            assert!(
                after <= d.max_replica,
                "round {round}: {} over max_replica",
                d.id
            );
            assert_eq!(
                after + missing,
                d.desired.min(d.max_replica),
                "round {round}: {}",
                d.id
            );
        }
    }
}
