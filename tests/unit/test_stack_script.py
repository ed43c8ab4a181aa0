"""scripts/stack.sh's own helpers, where a bug would only show once in a while."""

from __future__ import annotations

import subprocess

from testkit.stack import STACK_SH


def test_kafka_cluster_ids_never_start_with_a_dash() -> None:
    """kafka-storage format reads a cluster id starting with "-" as an option and fails;
    base64 of a random UUID starts with "-" once in 64, which once broke a fresh HA
    stack in CI's way (found by the HA chaos test). 2,000 ids: without the guard at
    least one starts with "-" with probability 1 - (63/64)^2000 > 0.999999."""
    script = (f'source <(sed -n "/^kafka_cluster_id() {{/,/^}}/p" "{STACK_SH}"); '
              "kafka_cluster_id 2000")
    out = subprocess.run(["bash", "-c", script], check=True, capture_output=True,
                         text=True).stdout.split()
    assert len(out) == 2000 and len(set(out)) == 2000
    assert all(len(cid) == 22 for cid in out)
    assert not [cid for cid in out if cid.startswith("-")]
