//! Little-endian field helpers: the shared ones from `mkdisk_tree::le`.

pub(crate) use mkdisk_tree::le::{put_bytes, put_i64, put_u16, put_u32, put_u64, put_u8};
