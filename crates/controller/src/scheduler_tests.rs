//! Table tests for the scheduler: each row is a small scenario and the whole expected plan.

use super::*;

const GIB: u64 = 1 << 30;

/// `value` after `change`: keeps table rows to one line each.
fn with<T>(mut value: T, change: impl FnOnce(&mut T)) -> T {
    change(&mut value);
    value
}

/// `replica` asked to stop and draining.
fn draining(replica: ReplicaState) -> ReplicaState {
    with(replica, |r| (r.phase, r.stop_requested) = (Draining, true))
}

/// `requirements` restricted to `region`.
fn in_region(requirements: Requirements, region: &str) -> Requirements {
    with(requirements, |r| r.region = Some(region.into()))
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
    with(w(id), |w| {
        (w.gpu_type, w.gpus) = (Some(gpu_type.into()), gpus)
    })
}

/// `worker` with image `img` and weights `llama` cached.
fn warm(worker: Worker) -> Worker {
    with(worker, |w| {
        w.cached_images.insert("img".into());
        w.cached_weights.insert("llama".into());
    })
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
    with(req(), |r| {
        (r.gpu_type, r.gpu_count) = (Some(gpu_type.into()), gpu_count)
    })
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
    with(rep(id, deployment, worker, Ready), |r| r.gpus = gpus)
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

/// One table row: a scenario and the whole plan it must give.
#[derive(Default)]
struct Case {
    name: &'static str,
    deployments: Vec<DeploymentState>,
    workers: Vec<Worker>,
    replicas: Vec<ReplicaState>,
    want: Plan,
}

fn case(name: &'static str) -> Case {
    Case {
        name,
        ..Case::default()
    }
}

impl Case {
    fn deployments(self, deployments: impl Into<Vec<DeploymentState>>) -> Self {
        with(self, |c| c.deployments = deployments.into())
    }

    fn workers(self, workers: impl Into<Vec<Worker>>) -> Self {
        with(self, |c| c.workers = workers.into())
    }

    fn replicas(self, replicas: impl Into<Vec<ReplicaState>>) -> Self {
        with(self, |c| c.replicas = replicas.into())
    }

    fn commands(self, commands: impl Into<Vec<Command>>) -> Self {
        with(self, |c| c.want.commands = commands.into())
    }

    /// Expects `missing` replicas of `deployment` to be reported unplaceable for `reason`.
    fn short(self, deployment: &str, missing: u32, reason: &str) -> Self {
        with(self, |c| {
            c.want.unplaceable.push(Unplaceable {
                deployment: deployment.into(),
                missing,
                reason: reason.into(),
            });
        })
    }
}

fn check(cases: Vec<Case>) {
    for case in cases {
        let got = plan(&case.deployments, &case.workers, &case.replicas);
        assert_eq!(got, case.want, "case: {}", case.name);
    }
}

use Phase::*;
use StopReason::*;

#[test]
fn placement() {
    check(vec![
        case("a 2-GPU replica skips a worker with 1 free GPU")
            .deployments([dep("d", 1, 5, gpu_req("H100", 2)), dep("x", 1, 1, req())])
            .workers([gpu_w("a", "H100", 2), gpu_w("b", "H100", 4)])
            .replicas([gpu_rep("x1", "x", "a", 1)])
            .commands([place("d", "b", 2)]),
        case("the wrong GPU type is refused")
            .deployments([dep("d", 1, 5, gpu_req("H100", 1))])
            .workers([gpu_w("a", "A100", 8), gpu_w("b", "H100", 8)])
            .commands([place("d", "b", 1)]),
        case("region is honoured")
            .deployments([dep("d", 1, 5, in_region(req(), "us-east"))])
            .workers([w("a"), with(w("b"), |w| w.region = "us-east".into())])
            .commands([place("d", "b", 0)]),
        case("workers without enough CPU or memory free are skipped")
            .deployments([dep("d", 1, 5, req()), dep("x", 1, 1, req())])
            .workers([
                with(w("a"), |w| w.cpu_millis = 1_500),
                with(w("b"), |w| w.memory_bytes = 2 * GIB),
                with(w("c"), |w| w.cpu_millis = 2_000),
            ])
            .replicas([rep("x1", "x", "a", Ready)])
            .commands([place("d", "c", 0)]),
        case("warm GPU worker beats a cold tighter fit")
            .deployments([dep("d", 1, 5, gpu_req("H100", 2))])
            .workers([gpu_w("a", "H100", 2), warm(gpu_w("b", "H100", 8))])
            .commands([place("d", "b", 2)]),
        case("image and weights beat image only beat cold with more CPU free")
            .deployments([dep("d", 1, 5, req())])
            .workers([
                with(w("a"), |w| w.cpu_millis = 64_000),
                with(w("b"), |w| w.cached_images = ["img".to_owned()].into()),
                warm(with(w("c"), |w| w.cpu_millis = 2_000)),
            ])
            .commands([place("d", "c", 0)]),
        case("GPU replicas pack onto the tightest fit")
            .deployments([dep("d", 1, 5, gpu_req("H100", 2))])
            .workers([
                gpu_w("a", "H100", 8),
                gpu_w("b", "H100", 4),
                gpu_w("c", "H100", 2),
            ])
            .commands([place("d", "c", 2)]),
        case("CPU-only replicas stay off GPU workers")
            .deployments([dep("d", 1, 5, req())])
            .workers([gpu_w("a", "H100", 8), w("b")])
            .commands([place("d", "b", 0)]),
        case("3 replicas spread over 3 workers rather than packing")
            .deployments([dep("d", 3, 5, gpu_req("H100", 1))])
            .workers([
                gpu_w("a", "H100", 8),
                gpu_w("b", "H100", 8),
                gpu_w("c", "H100", 8),
            ])
            .commands([place("d", "a", 1), place("d", "b", 1), place("d", "c", 1)]),
        case("spreading counts existing replicas")
            .deployments([dep("d", 3, 5, req())])
            .workers([w("a"), w("b"), w("c")])
            .replicas([rep("d1", "d", "a", Ready)])
            .commands([place("d", "b", 0), place("d", "c", 0)]),
        case("cordoned and dead workers get nothing")
            .deployments([dep("d", 1, 5, req())])
            .workers([
                with(w("a"), |w| w.schedulable = false),
                with(w("b"), |w| w.live = false),
                w("c"),
            ])
            .commands([place("d", "c", 0)]),
        case("placements earlier in the plan use capacity")
            .deployments([
                dep("d1", 1, 5, gpu_req("H100", 2)),
                dep("d2", 1, 5, gpu_req("H100", 2)),
            ])
            .workers([gpu_w("a", "H100", 2), gpu_w("b", "H100", 4)])
            .commands([place("d1", "a", 2), place("d2", "b", 2)]),
        case("stop-requested replicas hold capacity but do not count")
            .deployments([dep("d", 1, 5, gpu_req("H100", 2))])
            .workers([gpu_w("a", "H100", 2), gpu_w("b", "H100", 4)])
            .replicas([draining(gpu_rep("d1", "d", "a", 2))])
            .commands([place("d", "b", 2)]),
        case("terminal replicas hold nothing and do not count")
            .deployments([dep("d", 1, 5, gpu_req("H100", 2))])
            .workers([gpu_w("a", "H100", 2)])
            .replicas([with(gpu_rep("d1", "d", "a", 2), |r| r.phase = Failed)])
            .commands([place("d", "a", 2)]),
    ]);
}

#[test]
fn scaling_down_and_limits() {
    check(vec![
        case("at target: nothing to do")
            .deployments([dep("d", 1, 5, req())])
            .workers([w("a")])
            .replicas([rep("d1", "d", "a", Ready)]),
        case("scale down stops replicas not yet ready first, then the highest id")
            .deployments([dep("d", 1, 5, req())])
            .workers([w("a"), w("b"), w("c")])
            .replicas([
                rep("d1", "d", "a", Ready),
                rep("d2", "d", "b", Loading),
                rep("d3", "d", "c", Ready),
            ])
            .commands([stop("d2", ScaleDown), stop("d3", ScaleDown)]),
        case("scale down undoes crowding, recounting after each stop")
            .deployments([dep("d", 3, 5, req())])
            .workers([w("a"), w("b")])
            .replicas([
                rep("d1", "d", "a", Ready),
                rep("d2", "d", "a", Ready),
                rep("d3", "d", "a", Ready),
                rep("d4", "d", "b", Ready),
                rep("d5", "d", "b", Ready),
            ])
            .commands([stop("d3", ScaleDown), stop("d5", ScaleDown)]),
        case("desired 5, max 3: places only up to max")
            .deployments([dep("d", 5, 3, req())])
            .workers([w("a"), w("b"), w("c")])
            .replicas([rep("d1", "d", "a", Ready)])
            .commands([place("d", "b", 0), place("d", "c", 0)]),
        case("over max_replica: stop with OverMax")
            .deployments([dep("d", 5, 3, req())])
            .workers([w("a"), w("b")])
            .replicas([
                rep("d1", "d", "a", Ready),
                rep("d2", "d", "a", Ready),
                rep("d3", "d", "b", Ready),
                rep("d4", "d", "b", Ready),
            ])
            .commands([stop("d4", OverMax)]),
        case("stop-requested replicas are not stopped again nor replaced twice")
            .deployments([dep("d", 1, 5, req())])
            .workers([w("a")])
            .replicas([
                draining(rep("d1", "d", "a", Ready)),
                rep("d2", "d", "a", Ready),
            ]),
        case("deployment gone: stop its active replicas only")
            .deployments([dep("d", 1, 5, req())])
            .workers([w("a")])
            .replicas([
                rep("d1", "d", "a", Ready),
                rep("old1", "old", "a", Ready),
                draining(rep("old2", "old", "a", Ready)),
                rep("old3", "old", "a", Stopped),
                rep("old4", "old", "a", Pending),
            ])
            .commands([stop("old1", DeploymentGone), stop("old4", DeploymentGone)]),
    ]);
}

#[test]
fn lost_replicas() {
    check(vec![
        case("worker not live: MarkLost and replace elsewhere")
            .deployments([dep("d", 1, 5, gpu_req("H100", 1))])
            .workers([
                with(gpu_w("a", "H100", 8), |w| w.live = false),
                gpu_w("b", "H100", 8),
            ])
            .replicas([gpu_rep("d1", "d", "a", 1)])
            .commands([lost("d1"), place("d", "b", 1)]),
        case("worker missing: MarkLost, even when stop was requested")
            .deployments([dep("d", 1, 5, req())])
            .workers([w("b")])
            .replicas([
                rep("d1", "d", "gone", Ready),
                draining(rep("d2", "d", "gone", Ready)),
            ])
            .commands([lost("d1"), lost("d2"), place("d", "b", 0)]),
        case("terminal replicas on a dead worker are left alone")
            .deployments([dep("d", 0, 5, req())])
            .workers([with(w("a"), |w| w.live = false)])
            .replicas([rep("d1", "d", "a", Stopped), rep("d2", "d", "a", Lost)]),
        case("MarkLost first by replica id, then per deployment stops then places")
            .deployments([dep("e", 2, 5, req()), dep("f", 0, 5, req())])
            .workers([with(w("a"), |w| w.live = false), w("b")])
            .replicas([
                rep("z1", "e", "a", Ready),
                rep("f1", "f", "b", Ready),
                rep("g1", "gone", "b", Ready),
                rep("a1", "f", "a", Ready),
            ])
            .commands([
                lost("a1"),
                lost("z1"),
                place("e", "b", 0),
                place("e", "b", 0),
                stop("f1", ScaleDown),
                stop("g1", DeploymentGone),
            ]),
    ]);
}

#[test]
fn unplaceable_reasons() {
    let mut big = req();
    (big.cpu_millis, big.memory_bytes) = (4_000, 32 * GIB);
    check(vec![
        case("no live worker in the region")
            .deployments([dep("d", 2, 5, in_region(req(), "us-east"))])
            .workers([
                w("a"),
                with(w("b"), |w| (w.region, w.live) = ("us-east".into(), false)),
            ])
            .short("d", 2, "no live, schedulable worker in region us-east"),
        case("no live worker at all")
            .deployments([dep("d", 1, 5, req())])
            .workers([with(w("a"), |w| w.schedulable = false)])
            .short("d", 1, "no live, schedulable worker"),
        case("no worker of the GPU type")
            .deployments([dep("d", 1, 5, gpu_req("H100", 1))])
            .workers([gpu_w("a", "A100", 8), w("b")])
            .short("d", 1, "no live, schedulable worker has GPU type H100"),
        case("no GPU worker at all for an untyped GPU request")
            .deployments([dep("d", 1, 5, with(req(), |r| r.gpu_count = 1))])
            .workers([w("a")])
            .short("d", 1, "no live, schedulable worker has GPUs"),
        case("no worker large enough")
            .deployments([dep("d", 1, 5, gpu_req("H100", 4))])
            .workers([gpu_w("a", "H100", 2), gpu_w("b", "A100", 8)])
            .short(
                "d",
                1,
                "needs 4 × H100 on one worker; the largest matching worker has 2",
            ),
        case("not enough GPUs free")
            .deployments([dep("d", 1, 5, gpu_req("H100", 4)), dep("x", 1, 1, req())])
            .workers([gpu_w("a", "H100", 8)])
            .replicas([gpu_rep("x1", "x", "a", 6)])
            .short(
                "d",
                1,
                "needs 4 × H100 on one worker; the most free on any matching worker is 2",
            ),
        case("not enough CPU or memory on any one worker")
            .deployments([dep("d", 1, 5, big)])
            .workers([
                with(w("a"), |w| {
                    (w.cpu_millis, w.memory_bytes) = (8_000, 16 * GIB)
                }),
                with(w("b"), |w| w.cpu_millis = 2_000),
            ])
            .short(
                "d",
                1,
                "not enough CPU or memory free on any matching worker: needs 4000m CPU and \
                 32 GiB memory on one worker; the most free CPU on any is 8000m and the most \
                 free memory 64 GiB",
            ),
        case("some fit, the rest are reported")
            .deployments([dep("d", 3, 5, gpu_req("H100", 4))])
            .workers([gpu_w("a", "H100", 8)])
            .commands([place("d", "a", 4), place("d", "a", 4)])
            .short(
                "d",
                1,
                "needs 4 × H100 on one worker; the most free on any matching worker is 0",
            ),
        case("two deployments compete for one worker's GPUs; the first id wins")
            .deployments([
                dep("d2", 1, 5, gpu_req("H100", 2)),
                dep("d1", 1, 5, gpu_req("H100", 3)),
            ])
            .workers([gpu_w("a", "H100", 4)])
            .commands([place("d1", "a", 3)])
            .short(
                "d2",
                1,
                "needs 2 × H100 on one worker; the most free on any matching worker is 1",
            ),
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

    fn pick(&mut self, options: &[&str]) -> String {
        let i = self.below(u32::try_from(options.len()).unwrap_or(u32::MAX));
        options[i as usize].to_owned()
    }
}

fn scenario(rng: &mut Rng) -> (Vec<DeploymentState>, Vec<Worker>, Vec<ReplicaState>) {
    const TYPES: [&str; 2] = ["H100", "A100"];
    const REGIONS: [&str; 2] = ["us-west", "us-east"];
    let workers: Vec<Worker> = (0..2 + rng.below(5))
        .map(|i| {
            let mut w = gpu_w(&format!("w{i}"), &rng.pick(&TYPES), rng.below(9));
            w.region = rng.pick(&REGIONS);
            (w.live, w.schedulable) = (rng.below(6) > 0, rng.below(6) > 0);
            w.cpu_millis = 1_000 * (1 + rng.below(8));
            if rng.below(2) == 0 {
                w = warm(w);
            }
            w
        })
        .collect();
    let deployments = (0..1 + rng.below(4))
        .map(|i| {
            let mut r = gpu_req(&rng.pick(&TYPES), rng.below(4));
            r.region = (rng.below(3) == 0).then(|| rng.pick(&REGIONS));
            r.gpu_type = r.gpu_type.filter(|_| rng.below(2) == 0);
            r.cpu_millis = 500 * (1 + rng.below(4));
            dep(&format!("d{i}"), rng.below(6), 1 + rng.below(4), r)
        })
        .collect();
    let replicas = (0..rng.below(10))
        .map(|i| {
            let (d, w) = (format!("d{}", rng.below(5)), format!("w{}", rng.below(7)));
            let mut r = gpu_rep(&format!("r{i}"), &d, &w, rng.below(3));
            r.phase = PHASES[rng.below(9) as usize];
            (r.stop_requested, r.cpu_millis) = (rng.below(4) == 0, 500);
            r
        })
        .collect();
    (deployments, workers, replicas)
}

const PHASES: [Phase; 9] = [
    Pending, Fetching, Starting, Loading, Ready, Draining, Stopped, Failed, Lost,
];

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
        assert_eq!(got, plan(&deployments, &workers, &replicas), "{round}");
        let reversed = plan(&rev(&deployments), &rev(&workers), &rev(&replicas));
        assert_eq!(got, reversed, "round {round}: input order changed the plan");
    }
}

/// Replays each random plan against its inputs: placements fit, targets are met or reported.
#[test]
fn random_plans_respect_capacity_and_targets() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for round in 0..2_000 {
        let (deployments, workers, replicas) = scenario(&mut rng);
        let got = plan(&deployments, &workers, &replicas);
        let worker = |id: &str| workers.iter().find(|w| w.id == id);
        let live = |id: &str| worker(id).is_some_and(|w| w.live);
        let replica = |id: &str| replicas.iter().find(|r| r.id == id).expect("known");
        let wanted = |id: &str| deployments.iter().find(|d| d.id == id).expect("known");

        // Free [GPUs, CPU, memory] per worker (negative if overcommitted), active per deployment.
        let mut free: BTreeMap<&str, [i128; 3]> = BTreeMap::new();
        for w in &workers {
            free.insert(&w.id, amounts(w.gpus, w.cpu_millis, w.memory_bytes));
        }
        let mut active: BTreeMap<&str, u32> = BTreeMap::new();
        for r in replicas.iter().filter(|r| !r.phase.is_terminal()) {
            if let Some(left) = free.get_mut(r.worker.as_str()).filter(|_| live(&r.worker)) {
                let held = amounts(r.gpus, r.cpu_millis, r.memory_bytes);
                left.iter_mut().zip(held).for_each(|(f, h)| *f -= h);
                *active.entry(&r.deployment).or_default() += u32::from(!r.stop_requested);
            }
        }

        for command in &got.commands {
            match command {
                Command::MarkLost { replica: id } => {
                    assert!(!live(&replica(id).worker), "{round}: {id} is not lost");
                }
                Command::Stop { replica: id, .. } => {
                    *active.entry(&replica(id).deployment).or_default() -= 1;
                }
                Command::Place {
                    deployment,
                    worker: on,
                    gpus,
                } => {
                    let (req, w) = (&wanted(deployment).requirements, worker(on).expect("known"));
                    let region = req.region.as_ref().is_none_or(|r| *r == w.region);
                    assert!(
                        w.live && w.schedulable && region,
                        "{round}: {on} may not run it"
                    );
                    let typed = req.gpu_type.is_none() || w.gpu_type == req.gpu_type;
                    assert!(*gpus == req.gpu_count && (*gpus == 0 || typed), "{round}");
                    let need = amounts(req.gpu_count, req.cpu_millis, req.memory_bytes);
                    let left = free.get_mut(on.as_str()).expect("known");
                    for (f, n) in left.iter_mut().zip(need) {
                        *f -= n;
                        assert!(n == 0 || *f >= 0, "{round}: {on} over capacity");
                    }
                    *active.entry(deployment).or_default() += 1;
                }
            }
        }

        for d in &deployments {
            let after = active.get(d.id.as_str()).copied().unwrap_or(0);
            let short = got.unplaceable.iter().filter(|u| u.deployment == d.id);
            let missing: u32 = short.map(|u| u.missing).sum();
            assert!(after <= d.max_replica, "{round}: {} over max_replica", d.id);
            let target = d.desired.min(d.max_replica);
            assert_eq!(after + missing, target, "{round}: {} off target", d.id);
        }
    }
}
