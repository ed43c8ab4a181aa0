"""The command line: ``worker.py [run | migrate | audit | inspect | dry-run | dlq-replay]``.
Parses arguments, reads the configuration from the environment, and hands over to the
module that owns the command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from els_worker import admin, audit, replay
from els_worker.config import Config, settings_table, split_urls
from els_worker.errors import describe_table
from els_worker.observability import setup_logging


def _epilog() -> str:
    lines = ["environment variables (defaults in brackets):"]
    for name, default, text in settings_table():
        lines += [f"  {name} [{default}]", f"      {text}"]
    lines += ["", "error handling (SQLSTATE prefix, action, kind, why):", *describe_table()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker.py",
        description="Essay Lifecycle Service worker: consumes the input topics, applies each "
        "event with its PL/pgSQL function, dead-letters rejected events, relays the outbox "
        "to Kafka, closes overdue batches and purges history when configured, and serves "
        "/metrics, /healthz and /health/batches.",
        epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="run the worker (default)")
    sub.add_parser("migrate", help="apply database migrations and reload sql/ (with "
                   "ELS_PARTITION_URLS: every partition, then the proxy)")
    p_audit = sub.add_parser(
        "audit", help="prove that Kafka holds every outbox row published recently",
        description=audit.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p_audit.add_argument("--since", default="24 hours",
                         help="a PostgreSQL interval: audit rows published this recently "
                         "(default: 24 hours)")
    p_audit.add_argument("--timeout", type=float, default=300.0,
                         help="give up (exit 2) after this many seconds (default 300)")
    p_inspect = sub.add_parser("inspect", help="readable report of one batch (els.batch_report)")
    p_inspect.add_argument("batch_id")
    p_inspect.add_argument("--json", action="store_true", help="print the raw JSON report")
    p_dry = sub.add_parser(
        "dry-run", help="apply one event in a rolled-back transaction and show what it would do")
    p_dry.add_argument("topic", help="input topic (full, default or short name)")
    p_dry.add_argument("file", nargs="?", default="-", help="file holding the event (- = stdin)")
    p_replay = sub.add_parser(
        "dlq-replay", help="move dead letters back to their input topic, exactly once",
        description=replay.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p_replay.add_argument("--dry-run", action="store_true",
                          help="show what replaying each letter would do now; change nothing")
    p_replay.add_argument("--sqlstate", action="append", default=[],
                          help="replay only letters whose SQLSTATE starts with this (repeatable)")
    p_replay.add_argument("--topic", action="append", default=[],
                          help="input topic whose .dlq to replay (repeatable; default: all three)")
    p_replay.add_argument("--timeout", type=float, default=30.0,
                          help="give up after this many idle seconds (default 30)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = Config.from_env()
    setup_logging(cfg.log_level)
    command = args.command or "run"
    if command == "migrate":
        from els_migrate import apply_migrations

        if cfg.partition_urls:
            from els_worker import partitions

            try:
                done = partitions.migrate(cfg.database_url,
                                          split_urls(cfg.partition_urls))
            except partitions.PartitionError as exc:
                print(f"migrate refused: {exc}", file=sys.stderr)
                return 2
            print("\n".join(done))
            return 0
        applied = apply_migrations(cfg.database_url)
        print("applied:", ", ".join(applied) or "nothing (functions reloaded)")
        return 0
    if command == "audit":
        return audit.cmd_audit(cfg, args.since, args.timeout)
    if command == "inspect":
        return admin.cmd_inspect(cfg, args.batch_id, args.json)
    if command == "dry-run":
        return admin.cmd_dry_run(cfg, args.topic, args.file)
    if command == "dlq-replay":
        return replay.cmd_dlq_replay(cfg, args.topic, args.sqlstate, args.dry_run, args.timeout)
    from els_worker.service import Worker

    worker = Worker(cfg)
    worker.install_signal_handlers()
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
