//! Property tests of the placement: any valid request places aligned, disjoint partitions
//! inside the usable area, in (priority, name) order, with the sizes asked for; any request at
//! all returns a result or an error, never a panic.

use mkdisk_gpt::{computed_alignment, place, DiskRequest, PartitionRequest};
use proptest::prelude::*;
use uuid::Uuid;

fn req(parts: Vec<(String, i64, u64, u64)>, tail: bool, disk_mib: u64) -> DiskRequest {
    let mut partitions: Vec<PartitionRequest> = parts
        .into_iter()
        .map(|(name, priority, kib, align)| PartitionRequest {
            name,
            label: String::new(),
            type_guid: Uuid::from_u128(0x0FC63DAF_8483_4772_8E79_3D69D8477DE4),
            start: "0".into(),
            end: format!("+{kib}K"),
            alignment: align,
            priority,
            attributes: vec![],
            uuid: None,
        })
        .collect();
    if tail {
        partitions.push(PartitionRequest {
            name: "zz-tail".into(),
            label: String::new(),
            type_guid: Uuid::from_u128(0x0FC63DAF_8483_4772_8E79_3D69D8477DE4),
            start: "0".into(),
            end: "-0".into(),
            alignment: 0,
            priority: 9001,
            attributes: vec![59],
            uuid: None,
        });
    }
    DiskRequest { name: "d".into(), size_bytes: disk_mib << 20, partitions }
}

fn part_strategy() -> impl Strategy<Value = (String, i64, u64, u64)> {
    (
        "[a-zA-Z][a-zA-Z0-9_]{0,6}",
        0i64..2000,
        1u64..4096,
        prop_oneof![Just(0u64), Just(1), Just(8), Just(2048), Just(4096)],
    )
}

proptest! {
    #[test]
    fn valid_requests_place_correctly(
        parts in prop::collection::btree_map("[a-zA-Z][a-zA-Z0-9_]{0,6}", part_strategy(), 1..10),
        tail in any::<bool>(),
        extra_mib in 4u64..64,
    ) {
        let parts: Vec<_> = parts.into_iter().map(|(k, (_, p, s, a))| (k, p, s, a)).collect();
        // Room for every partition with worst-case alignment padding.
        let need_mib: u64 = parts.iter().map(|p| p.2.div_ceil(1024) + 2).sum();
        let r = req(parts.clone(), tail, need_mib + extra_mib);
        let l = place(&r, &Uuid::nil()).expect("a request with room must place");
        prop_assert_eq!(l.partitions.len(), r.partitions.len());
        for (i, p) in l.partitions.iter().enumerate() {
            let spec = r.partitions.iter().find(|s| s.name == p.name).unwrap();
            // sgdisk's own alignment follows the starts of the partitions created before.
            let a = if spec.alignment == 0 {
                computed_alignment(l.partitions[..i].iter().map(|q| q.first_lba), l.sectors)
            } else {
                spec.alignment
            };
            prop_assert_eq!(p.first_lba % a, 0, "{} not aligned", p.name);
            prop_assert!(p.first_lba >= l.first_usable_lba && p.last_lba <= l.last_usable_lba);
            prop_assert!(p.first_lba <= p.last_lba);
            for q in &l.partitions[..i] {
                prop_assert!(p.last_lba < q.first_lba || q.last_lba < p.first_lba, "{} overlaps {}", p.name, q.name);
                let qs = r.partitions.iter().find(|s| s.name == q.name).unwrap();
                prop_assert!((qs.priority, qs.name.as_bytes()) <= (spec.priority, spec.name.as_bytes()));
            }
            if spec.end.starts_with('+') {
                let kib: u64 = spec.end[1..spec.end.len() - 1].parse().unwrap();
                prop_assert_eq!(p.sectors(), kib * 2, "{} size", p.name);
            } else {
                prop_assert_eq!((p.last_lba + 1) % a, 0, "tail end not aligned");
            }
            prop_assert_eq!(p.number as usize, i + 1);
        }
        // Deterministic.
        prop_assert_eq!(place(&r, &Uuid::nil()).unwrap(), l);
    }

    #[test]
    fn arbitrary_requests_never_panic(
        starts in prop::collection::vec("[-+]?[0-9]{0,22}[KMGTPsx%]?", 1..6),
        ends in prop::collection::vec("[-+]?[0-9]{0,22}[KMGTPsx%]?", 1..6),
        aligns in prop::collection::vec(0u64..1_000_000, 1..6),
        size in 0u64..(1 << 40),
    ) {
        let n = starts.len().min(ends.len()).min(aligns.len());
        let partitions = (0..n).map(|i| PartitionRequest {
            name: format!("p{i}"),
            label: String::new(),
            type_guid: Uuid::nil(),
            start: starts[i].clone(),
            end: ends[i].clone(),
            alignment: aligns[i],
            priority: i64::try_from(i).unwrap(),
            attributes: vec![],
            uuid: Some(Uuid::from_u128(i as u128 + 1)),
        }).collect();
        let r = DiskRequest { name: "d".into(), size_bytes: size, partitions };
        if let Ok(l) = place(&r, &Uuid::nil()) {
            for (i, p) in l.partitions.iter().enumerate() {
                prop_assert!(p.first_lba >= l.first_usable_lba && p.last_lba <= l.last_usable_lba);
                for q in &l.partitions[..i] {
                    prop_assert!(p.last_lba < q.first_lba || q.last_lba < p.first_lba);
                }
            }
        }
    }
}
