//! Property tests of the spec parser: the real disko exports with one value replaced by
//! something random parse to a typed error or to a layout that places or fails cleanly —
//! never a panic.

use proptest::prelude::*;
use serde_json::Value;

fn shared_specs() -> Vec<Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/disko");
    let mut v: Vec<Value> = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            v.push(serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap());
        }
    }
    v.sort_by_key(|v| v.to_string());
    v
}

/// Every path (as pointer) to a value inside `v`.
fn pointers(v: &Value, prefix: String, out: &mut Vec<String>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                pointers(x, format!("{prefix}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{prefix}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn random_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[-+]?[0-9]{0,25}[KMGTPs%x]?".prop_map(Value::from),
        "(EF00|EF02|8200|8300|zzzz|100%|-0|\\+1M|/|/boot|vfat|ext4|btrfs|swap|luks|filesystem|gpt|table|disk|)"
            .prop_map(Value::from),
        Just(Value::Array(vec![])),
        Just(serde_json::json!({})),
        Just(serde_json::json!({"type": "filesystem", "format": "vfat"})),
        Just(serde_json::json!([0, 1, 200])),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn mutated_exports_never_panic(which in 0usize..64, at in 0usize..10_000, value in random_value()) {
        let specs = shared_specs();
        let mut v = specs[which % specs.len()].clone();
        let mut ptrs = Vec::new();
        pointers(&v, String::new(), &mut ptrs);
        let p = &ptrs[at % ptrs.len()];
        if p.is_empty() {
            v = value;
        } else if let Some(slot) = v.pointer_mut(p) {
            *slot = value;
        }
        if let Ok(spec) = mkdisk::Spec::from_value(&v) {
            let _ = mkdisk::place_all(&spec, &mkdisk_tree::ids::DEFAULT_SEED);
        }
    }
}
