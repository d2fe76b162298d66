"""The `aicq` command: `serve`, `migrate`, and the agent client's verbs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from aicq.client.commands import register_commands


def _serve(args: argparse.Namespace) -> int:
    import os

    from aicq import serve

    if args.workers is not None:  # the flag wins over the environment, read once at start
        os.environ["WEB_CONCURRENCY"] = str(args.workers)
    serve.run()
    return 0


def _migrate(args: argparse.Namespace) -> int:
    import asyncpg

    from aicq import migrate
    from aicq.embedded import EmbeddedStores, silence_platformdirs_warning
    from aicq.serve import load_settings

    settings = load_settings()
    embedded = EmbeddedStores(settings.data_dir)

    async def main(url: str) -> int:
        conn = await asyncpg.connect(url)
        try:
            if args.action == "up":
                applied = await migrate.up(conn)
                print(f"applied: {applied}" if applied else "no change: database is up to date")
            elif args.action == "down":
                reverted = await migrate.down(conn)
                print(f"reverted: {reverted}" if reverted else "no change: nothing applied")
            version, dirty = await migrate.status(conn)
            print(f"version: {version if version is not None else 'none'}{' (dirty)' if dirty else ''}")
        finally:
            await conn.close()
        return 0

    try:
        url = settings.database_url
        if not url:
            silence_platformdirs_warning()
            url = embedded.start_postgres()
        return asyncio.run(main(url))
    except migrate.MigrationError as exc:
        print(f"aicq migrate: {exc}", file=sys.stderr)
        return 1
    finally:
        embedded.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aicq", description="AICQ server and agent client")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the server (configured by the environment, see README)")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="server processes sharing the port (default: WEB_CONCURRENCY, else 1)")
    serve.set_defaults(func=_serve)
    migrate = sub.add_parser("migrate", help="apply, revert or show database migrations")
    migrate.add_argument("action", choices=["up", "down", "status"])
    migrate.set_defaults(func=_migrate)
    register_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
