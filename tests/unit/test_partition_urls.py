"""ELS_PARTITION_URLS as the worker reads it, and a partition URL as PL/Proxy takes it."""

from __future__ import annotations

from els_worker.config import split_urls
from els_worker.partitions import cluster_connstr


def test_partition_urls_split_on_urls_not_on_the_commas_of_a_multi_host_url() -> None:
    assert split_urls("") == []
    assert split_urls(" postgresql://a/p0 , postgresql://b/p1 ") == [
        "postgresql://a/p0", "postgresql://b/p1"]
    assert split_urls("postgresql://h1,h2/p0?target_session_attrs=read-write,postgres://h3/p1") == [
        "postgresql://h1,h2/p0?target_session_attrs=read-write", "postgres://h3/p1"]


def test_a_partition_url_becomes_keywords_with_the_credentials_apart() -> None:
    connstr, user, password = cluster_connstr("postgresql://els:secret@db1:5433/els_part_0")
    assert (user, password) == ("els", "secret")
    assert "user" not in connstr and "secret" not in connstr
    assert set(connstr.split()) == {"host=db1", "port=5433", "dbname=els_part_0"}
    assert cluster_connstr("postgresql://127.0.0.1/p")[1:] == ("postgres", None)
