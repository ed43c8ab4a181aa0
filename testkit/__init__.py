"""Test support shared by ``tests/``, ``chaos/``, ``bench/`` and ``scripts/demo.py``: one
place for stack discovery (``stack``), input-event builders (``events``), Kafka topics,
producing and reading (``kafka``), the worker as a subprocess (``worker``), state reads
(``db``) and the database invariants every scenario must keep (``invariants``)."""
