//! Tests of [`super`].
use super::*;

const H100_LINE: &str =
    "0, NVIDIA H100 80GB HBM3, 81559 MiB, GPU-1d3f0c1a-aaaa-bbbb-cccc-000000000000";

/// A parsed GPU as `(index, name, memory_bytes, uuid)`.
type Row<'a> = (u32, &'a str, u64, Option<&'a str>);

#[test]
fn parse_nvidia_smi_good_inputs() {
    let cases: &[(&str, &[Row<'_>])] = &[
        ("", &[]),
        ("\n  \n", &[]),
        (
            H100_LINE,
            &[(
                0,
                "NVIDIA H100 80GB HBM3",
                81559 * MIB,
                Some("GPU-1d3f0c1a-aaaa-bbbb-cccc-000000000000"),
            )],
        ),
        (
            "0, Tesla T4, 15360 MiB, GPU-a\n1, Tesla T4, 15360 MiB, GPU-b\n",
            &[
                (0, "Tesla T4", 15360 * MIB, Some("GPU-a")),
                (1, "Tesla T4", 15360 * MIB, Some("GPU-b")),
            ],
        ),
        (
            "  3 ,  NVIDIA L4 ,23034 MiB,[N/A]  ",
            &[(3, "NVIDIA L4", 23034 * MIB, None)],
        ),
        (
            "1, NVIDIA A10G, 23028, ",
            &[(1, "NVIDIA A10G", 23028 * MIB, None)],
        ),
    ];
    for (input, want) in cases {
        let got = parse_nvidia_smi(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        let got: Vec<Row<'_>> = got
            .iter()
            .map(|g| (g.index, g.name.as_str(), g.memory_bytes, g.uuid.as_deref()))
            .collect();
        assert_eq!(&got, want, "input {input:?}");
    }
}

#[test]
fn parse_nvidia_smi_bad_inputs_name_the_line() {
    let cases: &[(&str, usize, &str)] = &[
        ("garbage", 1, "1 field(s)"),
        ("0, H100, 81559 MiB", 1, "3 field(s)"),
        ("0, H100, 81559 MiB, GPU-a, extra", 1, "5 field(s)"),
        ("x, H100, 81559 MiB, GPU-a", 1, "index"),
        ("-1, H100, 81559 MiB, GPU-a", 1, "index"),
        ("0, , 81559 MiB, GPU-a", 1, "name"),
        ("0, H100, lots, GPU-a", 1, "memory"),
        ("0, H100, [N/A], GPU-a", 1, "memory"),
        (
            "0, Tesla T4, 15360 MiB, GPU-a\n\n1, Tesla T4, 15 GiB, GPU-b",
            3,
            "memory",
        ),
    ];
    for (input, line, reason) in cases {
        match parse_nvidia_smi(input) {
            Err(e @ GpuError::MalformedLine { .. }) => {
                let GpuError::MalformedLine {
                    line: got_line,
                    content,
                    ..
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!(got_line, line, "input {input:?}");
                let msg = e.to_string();
                assert!(msg.contains(reason), "{msg:?} lacks {reason:?}");
                assert!(msg.contains(content.as_str()), "{msg:?} lacks the line");
                assert!(msg.contains(&format!("line {line}")), "{msg:?}");
            }
            other => panic!("input {input:?}: expected MalformedLine, got {other:?}"),
        }
    }
}

#[test]
fn parse_nvidia_smi_refuses_duplicate_indices() {
    let err = parse_nvidia_smi("0, T4, 15360 MiB, a\n0, T4, 15360 MiB, b").unwrap_err();
    assert!(
        matches!(
            err,
            GpuError::DuplicateIndex {
                index: 0,
                first: 1,
                second: 2
            }
        ),
        "{err:?}"
    );
}

#[test]
fn parse_declared_good_inputs() {
    let cases: &[(&str, u32, &str, u64)] = &[
        ("2xH100-80GB", 2, "H100-80GB", 80 * GIB),
        ("H100-80GB", 1, "H100-80GB", 80 * GIB),
        ("1xT4-16GB", 1, "T4-16GB", 16 * GIB),
        (" 8xa100-sxm4-40gb ", 8, "A100-SXM4-40GB", 40 * GIB),
        ("4XL4", 4, "L4", 0),
        ("RTX-4090", 1, "RTX-4090", 0),
        ("1024xH100-80GB", 1024, "H100-80GB", 80 * GIB),
    ];
    for &(spec, count, ty, memory) in cases {
        let inv = parse_declared(spec).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
        assert_eq!(inv.source, Source::Declared, "{spec:?}");
        assert_eq!(inv.gpu_type.as_deref(), Some(ty), "{spec:?}");
        let want: Vec<Gpu> = (0..count)
            .map(|index| Gpu {
                index,
                name: ty.to_owned(),
                memory_bytes: memory,
                uuid: None,
            })
            .collect();
        assert_eq!(inv.gpus, want, "{spec:?}");
    }
}

#[test]
fn parse_declared_bad_inputs_explain_the_form() {
    let cases: &[(&str, &str)] = &[
        ("", "empty"),
        ("   ", "empty"),
        ("x", "count"),
        ("xH100", "count"),
        ("0xH100", "at least 1"),
        ("2x", "type"),
        ("2X", "type"),
        ("2H100", "count followed by `x`"),
        ("1025xH100", "at most 1024"),
        ("99999999999xH100", "too large"),
        ("2x-H100", "start with a letter"),
        ("2x100", "start with a letter"),
        ("2xH100_80GB", "letters, digits and dashes"),
        ("2xH100 80GB", "letters, digits and dashes"),
        ("2xH100-", "empty part"),
        ("2xH100--80GB", "empty part"),
    ];
    for (spec, reason) in cases {
        let err = parse_declared(spec).expect_err(spec);
        let msg = err.to_string();
        assert!(msg.contains(reason), "{spec:?}: {msg:?} lacks {reason:?}");
        assert!(msg.contains("e.g. 2xH100-80GB"), "{spec:?}: {msg:?}");
        assert!(msg.contains("<count>x<type>"), "{spec:?}: {msg:?}");
    }
}

#[test]
fn gpu_type_from_detected_names() {
    let cases: &[(&str, u64, &str)] = &[
        ("NVIDIA H100 80GB HBM3", 81559, "H100-80GB"),
        ("Tesla T4", 15360, "T4-16GB"),
        ("NVIDIA H100 PCIe", 81559, "H100-80GB"),
        ("NVIDIA H100 NVL", 95830, "H100-94GB"),
        ("NVIDIA H200", 143771, "H200-141GB"),
        ("NVIDIA A100-SXM4-40GB", 40960, "A100-40GB"),
        ("NVIDIA A100 80GB PCIe", 81920, "A100-80GB"),
        ("NVIDIA A10G", 23028, "A10G-24GB"),
        ("NVIDIA L4", 23034, "L4-24GB"),
        ("NVIDIA L40S", 46068, "L40S-48GB"),
        ("Tesla V100-SXM2-16GB", 16160, "V100-16GB"),
        ("NVIDIA GeForce RTX 4090", 24564, "RTX-4090-24GB"),
        ("NVIDIA RTX A6000", 49140, "RTX-A6000-48GB"),
        ("Quadro RTX 8000", 46080, "RTX-8000-48GB"),
        // Just over a marketed size still rounds to it; beyond the table, nearest GB.
        ("Big", 16 * 1024 + 400, "BIG-16GB"),
        ("Huge", 300 * 1024 + 600, "HUGE-301GB"),
        ("NVIDIA", 8192, "GPU-8GB"),
    ];
    for &(name, mib, want) in cases {
        assert_eq!(gpu_type_for(name, mib * MIB), want, "{name} {mib} MiB");
    }
}

#[test]
fn detected_inventory_has_one_type_or_none() {
    let t4 = |index| Gpu {
        index,
        name: "Tesla T4".to_owned(),
        memory_bytes: 15360 * MIB,
        uuid: None,
    };
    let inv = Inventory::detected(vec![t4(1), t4(0)]);
    assert_eq!(inv.gpu_type.as_deref(), Some("T4-16GB"));
    assert_eq!(inv.source, Source::Detected);
    assert_eq!(inv.gpus.iter().map(|g| g.index).collect::<Vec<_>>(), [0, 1]);

    let mut l4 = t4(2);
    l4.name = "NVIDIA L4".to_owned();
    l4.memory_bytes = 23034 * MIB;
    let mixed = Inventory::detected(vec![t4(0), t4(1), l4]);
    assert_eq!(mixed.gpu_type, None);
    assert_eq!(mixed.gpus.len(), 3);

    assert_eq!(Inventory::detected(Vec::new()).gpu_type, None);
}

fn allocator(count: u32) -> Allocator {
    Allocator::new(&parse_declared(&format!("{count}xH100-80GB")).unwrap())
}

#[test]
fn allocator_gives_lowest_free_and_never_shares() {
    let mut a = allocator(4);
    assert_eq!(a.free(), 4);
    assert_eq!(a.allocate("r1", 2).unwrap(), [0, 1]);
    assert_eq!(a.allocate("r2", 1).unwrap(), [2]);
    assert_eq!(a.free(), 1);
    a.release("r1");
    assert_eq!(a.free(), 3);
    assert_eq!(a.allocate("r3", 3).unwrap(), [0, 1, 3]);
    assert_eq!(a.free(), 0);
    assert_eq!(a.held_by("r2"), Some(&[2][..]));
    assert_eq!(a.held_by("r1"), None);

    let mut seen: Vec<u32> = a.held.values().flatten().copied().collect();
    seen.sort_unstable();
    let before = seen.len();
    seen.dedup();
    assert_eq!(seen.len(), before, "an index is held twice: {:?}", a.held);
}

#[test]
fn allocator_refuses_when_exhausted_and_changes_nothing() {
    let mut a = allocator(2);
    a.allocate("r1", 1).unwrap();
    let err = a.allocate("r2", 2).unwrap_err();
    assert!(
        matches!(
            err,
            GpuError::NotEnoughFree {
                requested: 2,
                free: 1,
                total: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("only 1 of 2 are free"), "{err}");
    assert_eq!(a.free(), 1);
    assert_eq!(a.held_by("r2"), None);
    assert_eq!(a.allocate("r2", 1).unwrap(), [1]);

    let mut cpu = Allocator::new(&Inventory::detected(Vec::new()));
    assert!(matches!(
        cpu.allocate("r", 1),
        Err(GpuError::NotEnoughFree { free: 0, .. })
    ));
    assert_eq!(cpu.allocate("r", 0).unwrap(), Vec::<u32>::new());
}

#[test]
fn allocator_refuses_a_second_allocation_for_a_replica() {
    let mut a = allocator(4);
    a.allocate("r1", 1).unwrap();
    let err = a.allocate("r1", 1).unwrap_err();
    assert!(
        matches!(&err, GpuError::AlreadyAllocated { held, .. } if held == &[0]),
        "{err:?}"
    );
    assert_eq!(a.free(), 3);
    a.release("r1");
    a.release("r1");
    assert_eq!(a.allocate("r1", 2).unwrap(), [0, 1]);
}

#[test]
fn cuda_visible_devices_lists_indices() {
    assert_eq!(cuda_visible_devices(&[]), "");
    assert_eq!(cuda_visible_devices(&[0]), "0");
    assert_eq!(cuda_visible_devices(&[0, 1]), "0,1");
    assert_eq!(cuda_visible_devices(&[3, 7, 2]), "3,7,2");
}

#[tokio::test]
async fn detect_without_nvidia_smi_is_a_cpu_node() {
    let inv = detect_with("tidal-test-no-such-nvidia-smi-7f3a", DETECT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(inv, Inventory::detected(Vec::new()));
    assert_eq!(inv.source, Source::Detected);
    assert!(inv.gpus.is_empty());
}
