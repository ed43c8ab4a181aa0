"""The run's report: what the worker logs say, the figures (kills, recovery times,
throughput, counts), the JSON written to build/chaos/ and its text form."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from typing import Any

from chaos.config import (
    ROOT,
)
from chaos.generator import Generated
from chaos.state import RunState


class Reporting:
    """Summarises the run from its state."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def worker_log_summary(self) -> dict[str, int]:
        wanted = {
            "event applied": "event_applied_lines",
            "event dead-lettered": "event_dead_lettered_lines",
            "operational database error: retrying micro-batch": "operational_retries",
            "unexpected error: retrying event": "unexpected_retries",
            "outbox relay round failed: rolled back, will republish": "relay_round_failures",
            "offset commit failed; messages may be redelivered (idempotent)": "commit_failures",
            "dead-letter produce not confirmed: retrying": "dlq_produce_retries",
            "partitions assigned": "partition_assignments",
            "worker stopped": "clean_stops",
        }
        counts: Counter[str] = Counter()
        tracebacks = 0
        for slot in self.state.slots:
            with slot.log_path.open("rb") as f:
                for raw in f:
                    if raw.startswith(b"Traceback"):
                        tracebacks += 1
                    if not raw.startswith(b"{"):
                        continue
                    try:
                        rec = json.loads(raw)
                    except ValueError:
                        continue
                    name = wanted.get(rec.get("msg", ""))
                    if name:
                        counts[name] += 1
        counts["tracebacks"] = tracebacks
        return dict(counts)

    def report(self, gen: Generated, summary: dict[str, Any], duration: float) -> dict[str, Any]:
        kills = [a for a in self.state.actions
                 if a.kind == "kill" and "was not running" not in a.detail]
        logs = self.worker_log_summary()
        report = {
            "run_id": self.state.run_id,
            "profile": self.state.cfg.name,
            "seed": self.state.cfg.seed,
            "command": " ".join(["python -m chaos.run", f"--profile {self.state.cfg.name}",
                                 f"--seed {self.state.cfg.seed}"]),
            "events": self.state.stats,
            "kills": len(kills),
            "kills_inside_transaction": sum(1 for a in kills if a.in_transaction),
            "kills_inside_consumer_transaction": sum(1 for a in kills
                                                     if "els-worker" in a.in_transaction),
            "kills_inside_relay_transaction": sum(1 for a in kills
                                                  if "els-outbox-relay" in a.in_transaction),
            "pg_restarts": sum(1 for a in self.state.actions if a.kind.startswith("pg-")),
            "kafka_restarts": sum(1 for a in self.state.actions if a.kind == "kafka-restart"),
            "topology": self.state.cfg.topology,
            "pg_failovers": sum(1 for a in self.state.actions if a.kind == "pg-failover"),
            "broker_kills": sum(1 for a in self.state.actions if a.kind == "broker-kill"),
            "partitions": self.state.cfg.partitions,
            "partition_blackouts": sum(1 for a in self.state.actions
                                       if a.kind == "partition-down"),
            "recovery": [{"kind": a.kind, "at_s": round(a.done_at or 0, 1), **a.recovery}
                         for a in self.state.actions if a.struck_at is not None],
            "valid_events_per_s": round(self.state.stats["valid"] / max(
                1e-9, self.state.timings.get("stream_s", 0)
                + self.state.timings.get("quiesce_s", 0)), 1),
            "actions": [asdict(a) for a in self.state.actions],
            "unexpected_worker_exits": sum(len(s.unexpected_exits) for s in self.state.slots),
            "applied": self.state.stats["valid"],
            "input": summary["input"],
            "dead_lettered": summary["dlq"],
            "db": summary["db"],
            "outputs": summary["outputs"],
            "worker_logs": logs,
            "mismatches": len(self.state.mismatches),
            "mismatch_list": self.state.mismatches[:200],
            "timings_s": {k: round(v, 1) for k, v in self.state.timings.items()},
            "duration_s": round(duration, 1),
            "artifacts": str(self.state.out),
        }
        (self.state.out / "report.json").write_text(json.dumps(report, indent=2, default=str))
        latest = ROOT / "build" / "chaos" / f"last-{self.state.cfg.name}.json"
        latest.parent.mkdir(parents=True, exist_ok=True)
        latest.write_text(json.dumps(report, indent=2, default=str))
        return report


def format_report(r: dict[str, Any]) -> str:
    ev, dlq, out = r["events"], r["dead_lettered"], r["outputs"]
    completed = out.get("completed", {})
    verdict = "PASS" if r["mismatches"] == 0 else "FAIL"
    lines = [
        f"chaos run {r['run_id']} (seed {r['seed']}): {verdict}",
        f"  events        {ev['messages']} produced: {ev['valid']} valid "
        f"(incl. {ev['redeliveries']} redeliveries), {ev['malformed']} malformed "
        f"of {ev['malformed_kinds']} variants; {ev['batches']} batches "
        f"({ev['batches_registered']} registered, {ev['batches_complete']} to complete)",
        f"  kills         {r['kills']} SIGKILLs of a worker (each restarted), "
        f"{r['kills_inside_transaction']} of them with uncommitted work in the database "
        f"({r['kills_inside_consumer_transaction']} mid micro-batch, "
        f"{r['kills_inside_relay_transaction']} mid outbox relay round); "
        f"{r['unexpected_worker_exits']} unexpected worker exit(s)",
        f"  restarts      PostgreSQL {r['pg_restarts']}, Kafka {r['kafka_restarts']}; "
        f"topology {r['topology']}: {r['pg_failovers']} primary kill(s), "
        f"{r['broker_kills']} broker kill(s)"
        + (f"; {r['partitions']} partitions behind the proxy: {r['partition_blackouts']} "
           "partition(s) down a while" if r.get("partitions") else ""),
        *(f"  recovery      {x}" for x in r["recovery"]),
        f"  throughput    {r['valid_events_per_s']} valid events/s (stream start to quiescence)",
        f"  input topics  {r['input']['acknowledged']} acknowledged, {r['input']['in_topics']} "
        f"read back, {r['input']['lost']} acknowledged but not at their offset, "
        f"{r['input'].get('sent_again_without_offset', 0)} sent again after a report "
        "without an offset",
        f"  applied       {r['applied']} valid deliveries; database: {r['db']['trackers']} "
        f"trackers, {r['db']['slots']} slots, {r['db']['contents']} contents, "
        f"{r['db']['failures']} failures, {r['db']['outbox_rows']} outbox rows "
        f"({r['db']['unpublished']} unpublished)",
        f"  dead-lettered {dlq['distinct']} distinct of {dlq['expected']} expected "
        f"({dlq['copies']} DLQ messages, {dlq['extra_copies']} redelivered copies) "
        f"{dlq['by_sqlstate']}",
        f"  completions   {completed.get('distinct_event_ids', 0)} distinct event ids for "
        f"{completed.get('complete_batches', 0)} complete batches "
        f"({completed.get('messages', 0)} messages)",
        f"  proofs        {out.get('delivery_proofs', {}).get('found', 0)} of "
        f"{out.get('delivery_proofs', {}).get('proven', 0)} published outbox rows read back at "
        "their recorded offset with their event id",
        f"  worker logs   {r['worker_logs']}",
        f"  mismatches    {r['mismatches']}",
        f"  duration      {r['duration_s']} s {r['timings_s']}",
        f"  artifacts     {r['artifacts']}",
    ]
    for m in r["mismatch_list"][:30]:
        lines.append(f"    MISMATCH {m}")
    return "\n".join(lines)
