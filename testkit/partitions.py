"""The topology of SPEC 9 for one test: partition databases cloned from the migrated
template, and a proxy database built over them by the worker's own code
(els_worker.partitions), as ``worker.py migrate`` builds it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql

from els_worker import partitions
from testkit import databases
from testkit.stack import Stack


@dataclass(frozen=True)
class Sharded:
    proxy_url: str
    partition_urls: list[str]

    def partition_of(self, key: str) -> int:
        """The partition a batch id (or an essay id) maps to, by the proxy's own mapping."""
        with psycopg.connect(self.proxy_url, autocommit=True) as conn:
            row = conn.execute("SELECT els.partition_of(%(k)s::text, %(n)s::integer)",
                               {"k": key, "n": len(self.partition_urls)}).fetchone()
        assert row is not None
        return int(row[0])


@contextmanager
def sharded(stack: Stack, template: str, count: int = 2) -> Iterator[Sharded]:
    """``count`` partitions behind a proxy, for the ``with`` block; all dropped after."""
    run = uuid.uuid4().hex[:12]
    with ExitStack() as dropping:
        urls = [dropping.enter_context(databases.clone(stack, template, f"part_{run}_{i}"))
                for i in range(count)]
        proxy = f"proxy_{run}"
        with psycopg.connect(stack.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(proxy)))
        dropping.callback(_drop, stack, proxy)
        for number, url in enumerate(urls):
            partitions.configure_partition(url, number, urls)
        partitions.build_proxy(stack.url_for(proxy), urls)
        yield Sharded(stack.url_for(proxy), urls)


def _drop(stack: Stack, name: str) -> None:
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        databases.drop_database(conn, name)
