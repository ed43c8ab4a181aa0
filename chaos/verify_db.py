"""Checks of the final database state against the oracle: each batch's tracker, slots,
content and failure ledgers, the SPEC's invariants, and the outbox."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

import psycopg

from chaos.oracle import BatchExpectation
from chaos.state import RunState


class DatabaseChecks:
    """Compares the database with the oracle, batch by batch; mismatches go to the run's
    state."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def verify_db(self, batches: dict[str, BatchExpectation], db: dict[str, Any],
                  conns: list[psycopg.Connection[Any]]) -> dict[str, Any]:
        """``conns``: the one database, or every partition (a batch is checked where its
        rows are: on the partition holding its tracker or items, else on the first)."""
        from testkit.invariants import check_invariants

        trackers = db["trackers"]
        unknown = (set(trackers) | set(db["contents"]) | set(db["failures"])) - set(batches)
        for bid in sorted(unknown):
            self.state.mismatch(f"batch {bid!r} has rows but no accepted event names it")
        checked = 0
        for bid, exp in batches.items():
            checked += 1
            try:
                check_invariants(conns[db["home"].get(bid, 0)], bid)
            except AssertionError as exc:
                self.state.mismatch(f"batch {bid!r}: SPEC rule 3 invariant broken: {exc}")
            self.compare_batch(exp, db)
        unpublished = sum(1 for o in db["outbox"] if not o["published"])
        if unpublished:
            self.state.mismatch(f"{unpublished} outbox row(s) not published")
        return {"batches_checked": checked, "trackers": len(trackers),
                "slots": sum(len(s) for s in db["slots"].values()),
                "contents": sum(len(c) for c in db["contents"].values()),
                "failures": sum(len(f) for f in db["failures"].values()),
                "outbox_rows": len(db["outbox"]), "unpublished": unpublished}

    def compare_batch(self, exp: BatchExpectation, db: dict[str, Any]) -> None:
        bid = exp.batch_id
        tracker = db["trackers"].get(bid)
        slots = db["slots"].get(bid, [])
        contents = db["contents"].get(bid, {})
        failures = db["failures"].get(bid, {})
        where = f"batch {bid!r}"
        if exp.registered != (tracker is not None):
            self.state.mismatch(f"{where}: registered {tracker is not None}, expected "
                                f"{exp.registered}")
            return
        if tracker is not None and exp.registration is not None:
            p = exp.registration.payload
            want = {"expected_count": p["expected_essay_count"], "essay_ids": p["essay_ids"],
                    "course_code": p["course_code"], "user_id": p["user_id"],
                    "org_id": p.get("org_id"), "class_id": p.get("class_id"),
                    "class_type": "GUEST" if p.get("class_id") is None else "REGULAR",
                    "metadata": p.get("metadata") or {},
                    "student_prompt_ref": p.get("student_prompt_ref"),
                    "registration_event_id": exp.registration.event_id}
            if exp.registration.correlation_id is not None:
                want["correlation_id"] = exp.registration.correlation_id
            for name, value in want.items():
                if tracker[name] != value:
                    self.state.mismatch(f"{where}: tracker.{name} = {tracker[name]!r}, "
                                        f"expected {value!r}")
            if [s["essay_id"] for s in slots] != p["essay_ids"]:
                self.state.mismatch(f"{where}: slots are not the essay ids in order")
            if tracker["complete"] != exp.complete:
                self.state.mismatch(f"{where}: complete {tracker['complete']}, expected "
                                    f"{exp.complete}")
        status = Counter(s["status"] for s in slots)
        actual = {
            "slots": len(slots),
            "filled": status["ready_for_processing"],
            "failed": status["content_ingestion_failed"],
            "empty": status["uploaded"],
            "pending_content": sum(1 for c in contents.values() if c["disposition"] == "pending"),
            "pending_failures": sum(1 for f in failures.values() if f["disposition"] == "pending"),
            "excess_content": sum(1 for c in contents.values() if c["disposition"] == "excess"),
            "excess_failures": sum(1 for f in failures.values() if f["disposition"] == "excess"),
            "completion_events": sum(1 for o in db["outbox_by_batch"].get(bid, [])
                                     if o["event_type"] == "BatchContentProvisioningCompleted"),
        }
        for name, (lo, hi) in exp.counts().items():
            if not lo <= actual[name] <= hi:
                self.state.mismatch(f"{where}: {name} = {actual[name]}, expected "
                                    f"{lo if lo == hi else f'{lo}..{hi}'}")
        if set(contents) != set(exp.contents):
            lost = sorted(set(exp.contents) - set(contents))[:3]
            extra = sorted(set(contents) - set(exp.contents))[:3]
            self.state.mismatch(f"{where}: contents {len(contents)} differ from the expected "
                                f"{len(exp.contents)} (missing {lost}, extra {extra})")
        if set(failures) != set(exp.failures):
            self.state.mismatch(f"{where}: failures {sorted(failures)[:3]} differ from the "
                                f"expected {sorted(exp.failures)[:3]}")
        for key, item in exp.contents.items():
            row = contents.get(key)
            if row is None or not item.fields_certain:
                continue
            p = item.payload
            want = {"file_upload_id": p["file_upload_id"],
                    "original_file_name": p["original_file_name"],
                    "raw_file_storage_id": p.get("raw_file_storage_id"),
                    "file_size_bytes": p.get("file_size_bytes"),
                    "content_md5_hash": p.get("content_md5_hash"),
                    "source_event_id": item.event_id, "event_timestamp": p.get("timestamp")}
            if item.correlation_id is not None:
                want["correlation_id"] = item.correlation_id
            for name, value in want.items():
                if row[name] != value:
                    self.state.mismatch(f"{where}: content {key!r}.{name} = {row[name]!r}, "
                                        f"expected {value!r}")
        for key, item in exp.failures.items():
            row = failures.get(key)
            if row is None or not item.fields_certain:
                continue
            p = item.payload
            want = {"original_file_name": p["original_file_name"],
                    "validation_error_code": p["validation_error_code"],
                    "validation_error_detail": p.get("validation_error_detail"),
                    "raw_file_storage_id": p.get("raw_file_storage_id"),
                    "file_size_bytes": p.get("file_size_bytes"),
                    "source_event_id": item.event_id, "event_timestamp": p.get("timestamp")}
            if item.correlation_id is not None:
                want["correlation_id"] = item.correlation_id
            for name, value in want.items():
                if row[name] != value:
                    self.state.mismatch(f"{where}: failure {key!r}.{name} = {row[name]!r}, "
                                        f"expected {value!r}")
        order = exp.deterministic_slots()
        if order is not None:
            got = [s["text_storage_id"] for s in slots if s["text_storage_id"] is not None]
            if got != order:
                self.state.mismatch(f"{where}: slot contents {got[:4]}... differ from the "
                                    f"order-determined {order[:4]}...")


def read_db(conns: list[psycopg.Connection[Any]]) -> dict[str, Any]:
    """The whole final state, as plain Python: of the one database, or merged over the
    partitions (each batch's rows live on one of them: "home" says which)."""
    home: dict[str, int] = {}

    def rows(query: str) -> Iterable[dict[str, Any]]:
        for number, conn in enumerate(conns):
            cur = conn.execute(query)
            names = [c.name for c in cur.description or []]
            for row in cur.fetchall():
                record = dict(zip(names, row, strict=True))
                batch_id = record.get("batch_id", record.get("message_key"))
                if isinstance(batch_id, str):
                    home.setdefault(batch_id, number)
                yield record

    trackers = {r["batch_id"]: r for r in rows(
        "SELECT batch_id, expected_count, essay_ids, course_code, user_id, org_id, class_id,"
        " class_type, metadata, student_prompt_ref, correlation_id, registration_event_id,"
        " completed_at IS NOT NULL AS complete FROM els.batch_tracker")}
    slots: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows("SELECT batch_id, essay_id, slot_no, status::text AS status, text_storage_id,"
                  " failed_file_upload_id FROM els.essay_slot ORDER BY batch_id, slot_no"):
        slots[r["batch_id"]].append(r)
    contents: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows("SELECT batch_id, text_storage_id, disposition::text AS disposition, essay_id,"
                  " file_upload_id, original_file_name, raw_file_storage_id, file_size_bytes,"
                  " content_md5_hash, correlation_id, source_event_id, event_timestamp"
                  " FROM els.essay_content"):
        contents[r["batch_id"]][r["text_storage_id"]] = r
    failures: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows("SELECT batch_id, file_upload_id, disposition::text AS disposition, essay_id,"
                  " original_file_name, validation_error_code, validation_error_detail,"
                  " raw_file_storage_id, file_size_bytes, correlation_id, source_event_id,"
                  " event_timestamp FROM els.validation_failure"):
        failures[r["batch_id"]][r["file_upload_id"]] = r
    outbox = list(rows("SELECT event_id::text AS event_id, event_type, message_key,"
                       " published_at IS NOT NULL AS published, kafka_topic, kafka_partition,"
                       " kafka_offset FROM els.event_outbox"))
    by_batch: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for o in outbox:
        by_batch[o["message_key"]].append(o)
    return {"trackers": trackers, "slots": slots, "contents": contents, "failures": failures,
            "outbox": outbox, "outbox_by_batch": by_batch, "home": home}
