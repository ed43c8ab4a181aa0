"""How often librdkafka's implicit-ack loss strikes the relay, with N requests in flight.

    .venv/bin/python -m bench.implicit_ack [--trials 30] [--in-flight 5]

Runs ``testkit.implicit_ack.trial`` (tests/stack/test_implicit_ack_loss.py's trial) N times in
a freshly migrated database of its own and counts the trials with a report of success
without an offset, and the rows the previous relay (which marked every error-free
report published) would have lost: those whose offset-less copy the broker never
stored. The relay of this tree loses none (each trial asserts it).
"""

from __future__ import annotations

import argparse
import sys
import time

import psycopg
from confluent_kafka.admin import AdminClient

from bench import common
from bench.audit import migrated_database
from testkit.implicit_ack import trial


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--in-flight", type=int, default=5,
                    help="max.in.flight.requests.per.connection of the relay's producer")
    args = ap.parse_args(argv)
    stack = common.stack_from_env()
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    hits = reports = lost_trials = lost = 0
    started = time.monotonic()
    with migrated_database(stack) as url, psycopg.connect(url, autocommit=True) as db:
        for _ in range(args.trials):
            n, gone = trial(db, url, stack.kafka_bootstrap, admin, in_flight=args.in_flight)
            hits += n > 0
            reports += n
            lost_trials += gone > 0
            lost += gone
    print(f"max.in.flight {args.in_flight}: {args.trials} trials in "
          f"{time.monotonic() - started:.0f} s; {hits} with a report of success without an "
          f"offset ({reports} reports); the previous relay would have lost {lost} row(s) in "
          f"{lost_trials} trial(s); this relay lost none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
