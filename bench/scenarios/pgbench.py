"""The ceiling: pgbench running CPOA's transition transaction shape, on a fresh database.

The transaction (synchronous commit, the server's defaults, simple protocol: 5 round trips):

    BEGIN;
    SELECT state, version FROM wf WHERE id = :id FOR UPDATE;        -- one of 10 000 rows
    INSERT INTO task (wf_id, step, result) VALUES (:id, 'step', '{"ok": true}');
    UPDATE wf SET state = 'next', version = version + 1, context = '{"k": "v"}', ... ;
    END;
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import Any

import psycopg

from bench.scenarios import common

ROWS = 10_000
SETUP = f"""
CREATE TABLE wf (id int PRIMARY KEY, state text NOT NULL, version bigint NOT NULL DEFAULT 0,
                 context jsonb NOT NULL DEFAULT '{{}}', updated_at timestamptz);
INSERT INTO wf (id, state) SELECT g, 'fetching' FROM generate_series(1, {ROWS}) g;
CREATE TABLE task (id bigserial PRIMARY KEY, wf_id int NOT NULL, step text NOT NULL,
                   result jsonb, created_at timestamptz NOT NULL DEFAULT now());
"""
SCRIPT = f"""\\set id random(1, {ROWS})
BEGIN;
SELECT state, version FROM wf WHERE id = :id FOR UPDATE;
INSERT INTO task (wf_id, step, result) VALUES (:id, 'step', '{{"ok": true}}');
UPDATE wf SET state = 'next', version = version + 1, context = '{{"k": "v"}}', updated_at = now() WHERE id = :id;
END;
"""
ROUND_TRIPS = 5


def binary() -> str:
    """pgbench on PATH, else the server's own."""
    found = shutil.which("pgbench")
    if found:
        return found
    for version in ("18", "17", "16", "15", "14"):
        path = f"/usr/lib/postgresql/{version}/bin/pgbench"
        if os.path.exists(path):
            return path
    raise RuntimeError("pgbench not found (Debian: apt-get install postgresql-client)")


def run(admin_dsn: str, clients: list[int], seconds: float) -> list[dict[str, Any]]:
    """One pgbench run per client count, each on a fresh database; returns their figures."""
    results = []
    exe = binary()
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(SCRIPT)
        script = f.name
    try:
        for count in clients:
            with common.fresh_db(admin_dsn, "pgbench") as dsn:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(SETUP)
                    conn.execute("VACUUM ANALYZE wf")
                    conn.execute("CHECKPOINT")
                params = psycopg.conninfo.conninfo_to_dict(dsn)
                name = params["dbname"]
                before = common.server_snapshot(admin_dsn, name)
                cmd = [exe, "-n", "-f", script, "-c", str(count), "-j", str(count),
                       "-T", str(max(1, round(seconds))), "-h", params.get("host", "127.0.0.1"),
                       "-p", str(params.get("port", 5432)), "-U", params.get("user", "postgres"),
                       name]
                env = dict(os.environ)
                if params.get("password"):
                    env["PGPASSWORD"] = params["password"]
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                common.wait_no_backends(admin_dsn, name)
                delta = common.server_delta(admin_dsn, before,
                                            common.server_snapshot(admin_dsn, name))
                tps = float(re.search(r"tps = ([\d.]+) \(without initial", out.stdout).group(1))
                done = int(re.search(r"number of transactions actually processed: (\d+)",
                                     out.stdout).group(1))
                latency = re.search(r"latency average = ([\d.]+) ms", out.stdout)
                results.append({
                    "clients": count, "tps": round(tps, 1), "transactions": done,
                    "latency_ms_avg": float(latency.group(1)) if latency else None,
                    "round_trips_per_transaction": ROUND_TRIPS,
                    "wal_bytes_per_transaction": round(delta["wal_bytes"] / max(done, 1)),
                    "wal_full_page_images_per_transaction": round(
                        delta["wal_fpi"] / max(done, 1), 2),
                    "checkpoints_during_run": delta["checkpoints"],
                    "commits": delta["xact_commit"],
                })
    finally:
        os.unlink(script)
    return results
