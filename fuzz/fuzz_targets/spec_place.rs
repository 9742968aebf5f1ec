//! Spec parser + placement: any bytes (JSON or TOML text) either give a typed error or a
//! layout whose partitions are in bounds and disjoint. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(spec) = mkdisk::Spec::parse(text) else { return };
    let Ok(plans) = mkdisk::place_all(&spec, &mkdisk_tree::ids::DEFAULT_SEED) else { return };
    for dp in plans {
        let l = &dp.layout;
        for (i, p) in l.partitions.iter().enumerate() {
            assert!(p.first_lba >= l.first_usable_lba && p.last_lba <= l.last_usable_lba);
            assert!(p.first_lba <= p.last_lba);
            for q in &l.partitions[..i] {
                assert!(p.last_lba < q.first_lba || q.last_lba < p.first_lba, "overlap");
            }
        }
    }
});
