"""Runs banter's migrations and dashboard queries on current ClickHouse, in-process (chdb).

    modern.py MIGRATE_SQL PANELS_JSON DATABASE

MIGRATE_SQL is `banter migrate --print-sql --server-version X` output (statements end with `;`
at the end of a line, comments are `--` lines); PANELS_JSON is a list of {"name", "sql"} with
the dashboards' macros and variables already expanded, and "prunes": true where the query must
use the partition and sorting keys (run with force_index_by_date and force_primary_key). Every
statement and every query must run; the failures are printed and the exit status is 1 if there
is one.
"""
import json
import sys
import tempfile

from chdb import session


def statements(path):
    out, cur = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = line.rstrip("\n")
            if not text.strip() or text.lstrip().startswith("--"):
                continue
            cur.append(text)
            if text.rstrip().endswith(";"):
                out.append("\n".join(cur).rstrip().rstrip(";"))
                cur = []
    if cur:
        out.append("\n".join(cur))
    return out


def main():
    sql_file, panels_file, db = sys.argv[1:4]
    s = session.Session(tempfile.mkdtemp(prefix="banter-chdb-"))
    version = s.query("SELECT version()", "CSV").bytes().decode().strip().strip('"')
    failures = []
    stmts = statements(sql_file)
    for st in stmts:
        try:
            s.query(st)
        except Exception as e:  # chdb raises its own error types
            failures.append(f"migration statement: {e}\n{st}")
    # Provisional rows (negative revision) and the final row of a window, inserted in the wrong
    # order: the final row is kept, or the latest provisional one (as on 18.16, see
    # crates/banter/tests/migrations.rs).
    try:
        low = -(2**63)
        for start, rev, n in [(60000, 7, 3), (60000, low + 5, 2), (60000, low + 7, 3),
                              (120000, low + 9, 4), (120000, low + 8, 1)]:
            s.query(f"INSERT INTO {db}.rollups (account_id, content_id, window_kind, window_start_ms, "
                    f"window_end_ms, revision, interactions, emitted_at_ms) VALUES "
                    f"('a', 'p', 'MINUTE', {start}, {start + 60000}, {rev}, {n}, 1)")
        want = f"60000,7,3\n120000,{low + 9},4"
        for table in ["rollups_final", "rollups"]:
            if table == "rollups":
                s.query(f"OPTIMIZE TABLE {db}.rollups FINAL")
            got = s.query(f"SELECT window_start_ms, revision, interactions FROM {db}.{table} "
                          "ORDER BY window_start_ms, revision", "CSV").bytes().decode().strip()
            if got != want:
                failures.append(f"provisional rows in {table}: got {got!r}, want {want!r}")
    except Exception as e:
        failures.append(f"provisional rows: {e}")
    with open(panels_file, encoding="utf-8") as f:
        panels = json.load(f)
    s.query(f"USE {db}")
    for p in panels:
        settings = " SETTINGS force_index_by_date = 1, force_primary_key = 1" if p.get("prunes") else ""
        try:
            s.query(f"SELECT count() FROM ({p['sql']}){settings}", "CSV")
        except Exception as e:
            failures.append(f"{p['name']}: {e}\n{p['sql']}")
    print(f"ClickHouse {version}: {len(stmts)} migration statements, {len(panels)} panel queries")
    for f in failures:
        print("FAILED", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
