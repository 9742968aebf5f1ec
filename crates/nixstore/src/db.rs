//! The Nix database `/nix/var/nix/db/db.sqlite` (nix-store.md §3).

use mkdisk_tree::{FileData, Meta, Timestamp, Tree};
use rusqlite::{params, Connection};

use crate::closure::Registration;
use crate::hash::hex;
use crate::NixError;

/// `nixSchemaVersion`: the content of `/nix/var/nix/db/schema` (no newline).
pub const NIX_SCHEMA_VERSION: &str = "10";

/// Nix's `src/libstore/schema.sql` as Nix 2.8 ships it, verbatim (later releases only add a
/// `-- base16 representation` comment after `hash`; the SQL text is what `sqlite_master` keeps).
pub const NIX_SCHEMA_SQL: &str = r#"create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer, -- null implies "false"
    sigs             text, -- space-separated
    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo
);

create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);

create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);

-- Paths can refer to themselves, causing a tuple (N, N) in the Refs
-- table.  This causes a deletion of the corresponding row in
-- ValidPaths to cause a foreign key constraint violation (due to `on
-- delete restrict' on the `reference' column).  Therefore, explicitly
-- get rid of self-references.
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;

create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);

create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
"#;

fn db_err(what: &str) -> impl FnOnce(rusqlite::Error) -> NixError + '_ {
    move |e| NixError::Db(format!("{what}: {e}"))
}

/// Build `db.sqlite` for `reg`: schema 10 as Nix creates it, one `ValidPaths` row per path
/// sorted by path (ids 1, 2, …; hash `sha256:<hex>`, `registrationTime`, deriver, narSize or
/// NULL when 0, no ultimate/sigs/ca), then one `Refs` row per (referrer, reference) including
/// self references. Rollback journal (`journal_mode = delete`), page size 4096. The bytes are
/// a function of the input and the bundled SQLite version only.
///
/// # Errors
/// [`NixError::UnknownReference`] for a reference outside `reg`, [`NixError::Db`] if SQLite
/// fails (e.g. no temporary directory).
pub fn nix_db(reg: &Registration, registration_time: i64) -> Result<Vec<u8>, NixError> {
    reg.check_references()?;
    let dir = tempfile::Builder::new()
        .prefix("mkdisk-nixdb")
        .tempdir()
        .map_err(|e| NixError::Db(format!("temporary directory: {e}")))?;
    let path = dir.path().join("db.sqlite");
    {
        let mut conn = Connection::open(&path).map_err(db_err("open"))?;
        // Before the first table: page size and journal mode are fixed in the header.
        conn.execute_batch("pragma page_size = 4096; pragma foreign_keys = 1;").map_err(db_err("pragmas"))?;
        let mode: String =
            conn.query_row("pragma journal_mode = delete", [], |r| r.get(0)).map_err(db_err("journal_mode"))?;
        if !mode.eq_ignore_ascii_case("delete") {
            return Err(NixError::Db(format!("journal_mode is {mode}, wanted delete")));
        }
        conn.execute_batch(NIX_SCHEMA_SQL).map_err(db_err("schema"))?;
        let tx = conn.transaction().map_err(db_err("begin"))?;
        let sorted = reg.sorted();
        {
            let mut ins = tx
                .prepare(
                    "insert into ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) \
                     values (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .map_err(db_err("prepare ValidPaths"))?;
            for p in &sorted {
                let size = i64::try_from(p.nar_size)
                    .map_err(|_| NixError::Db(format!("{}: narSize {} out of range", p.path, p.nar_size)))?;
                ins.execute(params![
                    p.path,
                    format!("sha256:{}", hex(&p.nar_hash)),
                    registration_time,
                    p.deriver,
                    if size == 0 { None } else { Some(size) },
                    Option::<i64>::None,
                    Option::<String>::None,
                    Option::<String>::None,
                ])
                .map_err(db_err("insert ValidPaths"))?;
            }
            let id_of = |path: &str| sorted.binary_search_by(|p| p.path.as_str().cmp(path)).map(|i| i + 1);
            let mut refs = tx
                .prepare("insert or replace into Refs (referrer, reference) values (?, ?)")
                .map_err(db_err("prepare Refs"))?;
            for (i, p) in sorted.iter().enumerate() {
                let mut targets: Vec<usize> = Vec::new();
                for r in &p.references {
                    let id = id_of(r)
                        .map_err(|_| NixError::UnknownReference { path: p.path.clone(), reference: r.clone() })?;
                    targets.push(id);
                }
                targets.sort_unstable();
                targets.dedup();
                for t in targets {
                    refs.execute(params![
                        // Row ids are 1 + an index into `sorted`, whose length is at most isize::MAX.
                        i64::try_from(i + 1).expect("a Vec index fits i64"),
                        i64::try_from(t).expect("a Vec index fits i64")
                    ])
                    .map_err(db_err("insert Refs"))?;
                }
            }
        }
        tx.commit().map_err(db_err("commit"))?;
        conn.close().map_err(|(_, e)| NixError::Db(format!("close: {e}")))?;
    }
    for side in ["db.sqlite-journal", "db.sqlite-wal", "db.sqlite-shm"] {
        if dir.path().join(side).exists() {
            return Err(NixError::Db(format!("SQLite left {side} behind")));
        }
    }
    std::fs::read(&path).map_err(|e| NixError::io(path, e))
}

/// Add `/nix/var/nix/db/db.sqlite` ([`nix_db`]) and `/nix/var/nix/db/schema` (`10`) to `tree`.
/// Directories are created 0755 with `mtime`; the files are 0644 with `mtime`.
///
/// # Errors
/// As [`nix_db`], or a tree error (e.g. the files already exist).
pub fn add_nix_db(tree: &mut Tree, reg: &Registration, registration_time: i64, mtime: i64) -> Result<(), NixError> {
    let db = nix_db(reg, registration_time)?;
    let t = Timestamp::from_secs(mtime);
    let dir =
        tree.mkdir_p(b"/nix/var/nix/db", &Meta::new(0o755).with_mtime(t)).map_err(NixError::tree("/nix/var/nix/db"))?;
    tree.add_file(dir, b"db.sqlite", FileData::from_bytes(db), Meta::new(0o644).with_mtime(t))
        .map_err(NixError::tree("/nix/var/nix/db/db.sqlite"))?;
    tree.add_file(
        dir,
        b"schema",
        FileData::from_bytes(NIX_SCHEMA_VERSION.as_bytes().to_vec()),
        Meta::new(0o644).with_mtime(t),
    )
    .map_err(NixError::tree("/nix/var/nix/db/schema"))?;
    Ok(())
}
