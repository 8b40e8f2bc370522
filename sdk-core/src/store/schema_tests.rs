//! The store's schema at open: a fresh file written from the template is the file set up
//! in place, and a complete file is trusted only while its schema is unchanged.

use std::path::Path;

use tern_protocol::Limits;

use super::*;

fn open_with(dir: &Path, template: bool) -> Db {
    Db::open_with(dir, StoreLimits::default(), Limits::default(), template)
        .expect("open")
        .0
}

/// Every schema object: (type, name, table, SQL).
fn objects(conn: &Connection) -> Vec<(String, String, String, Option<String>)> {
    conn.prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// The `meta` rows, those that name this installation (random ids) as keys only.
fn meta_rows(conn: &Connection) -> Vec<(String, Option<String>)> {
    const RANDOM: [&str; 3] = ["device_id", "anonymous_id", "install_id"];
    conn.prepare("SELECT key, CAST(value AS TEXT) FROM meta ORDER BY key")
        .unwrap()
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))
        .unwrap()
        .map(|row| {
            let (k, v) = row.unwrap();
            let v = if RANDOM.contains(&k.as_str()) {
                None
            } else {
                v
            };
            (k, v)
        })
        .collect()
}

fn pragma(conn: &Connection, name: &str) -> String {
    conn.query_row(&format!("PRAGMA {name}"), [], |r| {
        r.get::<_, rusqlite::types::Value>(0)
    })
    .map(|v| format!("{v:?}"))
    .unwrap()
}

#[test]
fn a_fresh_store_from_the_template_is_the_store_set_up_in_place() {
    let copied = tempfile::tempdir().unwrap();
    let built = tempfile::tempdir().unwrap();
    assert!(schema::write_fresh(&copied.path().join(DB_FILE)));
    assert!(
        !copied.path().join("tern.db-new").exists(),
        "the temporary file is renamed"
    );
    let a = open_with(copied.path(), true);
    let b = open_with(built.path(), false);
    assert_eq!(objects(&a.conn), objects(&b.conn));
    assert!(objects(&a.conn).len() >= 10, "{:?}", objects(&a.conn));
    assert_eq!(meta_rows(&a.conn), meta_rows(&b.conn));
    for p in [
        "user_version",
        "journal_mode",
        "page_size",
        "schema_version",
    ] {
        assert_eq!(pragma(&a.conn, p), pragma(&b.conn, p), "PRAGMA {p}");
    }
    assert_eq!(pragma(&a.conn, "journal_mode"), "Text(\"wal\")");
    assert_ne!(a.meta().device_id, b.meta().device_id);
    assert!(a.meta().context.install_pending, "a new install");
}

#[test]
fn the_template_is_not_written_over_a_file_or_beside_a_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    std::fs::write(dir.path().join("tern.db-wal"), b"").unwrap();
    assert!(!schema::write_fresh(&path));
    assert!(!path.exists());
    std::fs::remove_file(dir.path().join("tern.db-wal")).unwrap();
    std::fs::write(&path, b"").unwrap();
    assert!(!schema::write_fresh(&path));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
}

#[test]
fn a_complete_store_is_trusted_only_while_its_schema_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with(dir.path(), true);
    assert!(schema::is_complete(&db.conn).unwrap());
    drop(db);

    // Someone drops a table and a column: the next open sees the schema cookie moved
    // and sets the store up again.
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch("DROP TABLE exposures; ALTER TABLE events DROP COLUMN ctx_id;")
        .unwrap();
    assert!(!schema::is_complete(&conn).unwrap());
    drop(conn);
    let db = open_with(dir.path(), true);
    let names: Vec<String> = objects(&db.conn).into_iter().map(|o| o.1).collect();
    assert!(names.contains(&"exposures".to_string()), "{names:?}");
    let has_ctx: bool = db
        .conn
        .prepare("SELECT 1 FROM pragma_table_info('events') WHERE name = 'ctx_id'")
        .unwrap()
        .exists([])
        .unwrap();
    assert!(has_ctx);
    assert!(schema::is_complete(&db.conn).unwrap());
}

#[test]
fn a_later_level_is_trusted_and_kept_an_earlier_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with(dir.path(), true);
    db.conn
        .execute(
            "UPDATE meta SET value = ?1 WHERE key = 'schema_parts'",
            [schema::SCHEMA_PARTS + 4],
        )
        .unwrap();
    assert!(
        schema::is_complete(&db.conn).unwrap(),
        "a later SDK's level"
    );
    db.conn
        .execute(
            "UPDATE meta SET value = ?1 WHERE key = 'schema_parts'",
            [schema::SCHEMA_PARTS - 1],
        )
        .unwrap();
    assert!(!schema::is_complete(&db.conn).unwrap(), "an earlier level");
    db.conn
        .execute(
            "UPDATE meta SET value = ?1 WHERE key = 'schema_parts'",
            [schema::SCHEMA_PARTS + 4],
        )
        .unwrap();
    db.conn
        .execute_batch("CREATE TABLE later_part (x)")
        .unwrap();
    drop(db);
    // Set up again (the cookie moved), the later level is not lowered.
    let db = open_with(dir.path(), true);
    let parts: i64 = meta_get(&db.conn, "schema_parts").unwrap().unwrap();
    assert_eq!(parts, schema::SCHEMA_PARTS + 4);
    assert!(schema::is_complete(&db.conn).unwrap());
}
