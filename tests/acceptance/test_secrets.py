"""The database password never reaches a log line or an error message."""

from __future__ import annotations

from psycopg import conninfo as pg_conninfo

from cpoa.testing.cli import cli_env, run_cli

PASSWORD = "Zq8-s3cret-pw"


def test_logs__never_contain_the_password_from_a_dsn(dsn, agent):
    """A run at debug level with the password inside CPOA_DATABASE_URL never prints it."""
    params = pg_conninfo.conninfo_to_dict(dsn)
    params["password"] = PASSWORD
    env = cli_env(pg_conninfo.make_conninfo(**params), agent.url)
    result = run_cli(env, "-vv", "start", "podcast", "--topic", "t", "--wait")
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"level": "DEBUG"' in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_errors__never_contain_the_password_when_the_database_is_down(agent):
    """A connection failure names the problem, not the password in POSTGRES_PASSWORD or the URL."""
    for env in (cli_env(f"postgresql://cpoa:{PASSWORD}@127.0.0.1:1/cpoa", agent.url),
                {**cli_env("", agent.url), "CPOA_DATABASE_URL": "", "POSTGRES_HOST": "127.0.0.1",
                 "POSTGRES_PORT": "1", "POSTGRES_USER": "cpoa", "POSTGRES_PASSWORD": PASSWORD}):
        result = run_cli(env, "-vv", "list", timeout=90)
        assert result.returncode == 1
        assert "database error" in result.stderr
        assert PASSWORD not in result.stdout + result.stderr
