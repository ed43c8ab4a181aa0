"""Seeded event generator for the chaos run and the bad-input corpus.

``generate(GenConfig(seed=...))`` returns the messages to produce to the three
input topics, in production order: batches of 1..200 essays (GUEST and REGULAR)
whose content arrives before and after their registration, redeliveries (exact
copies and copies in a new envelope), validation failures, excess content, a few
batches that are never registered or never filled, batches whose every text field
is an SQL-injection string (to be stored verbatim), and a corpus of malformed
messages of many kinds (``MALFORMED_VARIANTS``) from invalid UTF-8 to a 5 MB value,
conflicting re-registrations and stolen essay ids.

Every message carries ``expect``: the SQLSTATE it must be dead-lettered with, or
None when it must be applied. ``expect`` comes from the independent oracle
(``chaos.oracle.predict``); the generator also records what it *meant* to
produce (``intent``) and refuses to return a stream on which the two disagree.

Ordering: Kafka orders messages only within a partition; messages with the same
topic and key share one. Every message of a batch is keyed by its batch id, and
the messages whose verdict depends on what came before (a conflicting
re-registration, a registration stealing another batch's essay id) are produced
after, and under the same key as, the registration they conflict with. So every
verdict is independent of how the worker interleaves partitions.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chaos.malformed import MALFORMED_VARIANTS, STATEFUL, Victim, build_malformed
from chaos.oracle import Prediction, Verdict, predict
from chaos.world import BIG_PAYLOAD_BYTES, INJECTIONS, GenConfig, World


@dataclass(frozen=True)
class Message:
    seq: int
    kind: str  # register | content | failure: the input topic
    key: bytes | None
    value: bytes | None
    label: str  # valid | redelivery | semantic-duplicate | a malformed variant
    batch_id: str | None
    expect: str | None  # SQLSTATE to be dead-lettered with (oracle); None: applied
    intent: str | None  # what the generator meant (must equal expect)

    @property
    def malformed(self) -> bool:
        return self.expect is not None


@dataclass
class Generated:
    config: GenConfig
    messages: list[Message]
    prediction: Prediction

    def stats(self) -> dict[str, Any]:
        labels = Counter(m.label.split(":")[0] for m in self.messages)
        kinds = {m.label for m in self.messages if m.malformed}
        return {
            "messages": len(self.messages),
            "valid": sum(1 for m in self.messages if not m.malformed),
            "redeliveries": labels["redelivery"] + labels["semantic-duplicate"],
            "malformed": sum(1 for m in self.messages if m.malformed),
            "malformed_kinds": len({k.split("+")[0] for k in kinds}),
            "by_sqlstate": dict(sorted(Counter(m.expect or "applied" for m in self.messages)
                                       .items())),
            "batches": len(self.prediction.batches),
            **self.prediction.totals(),
            "excess_contents": sum(b.counts()["excess_content"][0]
                                   for b in self.prediction.batches.values()),
            "bytes": sum(len(m.value or b"") for m in self.messages),
        }


class GeneratorError(Exception):
    """The oracle disagrees with what the generator meant to produce."""


@dataclass
class _Spec:
    time: float
    kind: str
    key: bytes | None
    value: bytes | None
    label: str
    batch_id: str | None
    intent: str | None


# ---------------------------------------------------------------------------
# The whole stream
# ---------------------------------------------------------------------------


def _essay_count(rng: random.Random, cfg: GenConfig) -> int:
    """Skewed log-uniform in [min, max]: many small batches, some large ones."""
    lo, hi = math.log(cfg.min_essays), math.log(cfg.max_essays + 1)
    x = rng.random() ** cfg.size_skew
    return min(cfg.max_essays, max(cfg.min_essays, int(math.exp(lo + x * (hi - lo)))))


def _injector(batch_no: int, rng: random.Random) -> Callable[[str], str]:
    def inj(tag: str) -> str:
        return f"{rng.choice(INJECTIONS)} [{tag} #{batch_no}]"
    return inj


def generate(cfg: GenConfig) -> Generated:
    rng = random.Random(cfg.seed)
    world = World(rng, cfg)
    specs: list[_Spec] = []
    victims: list[Victim] = []
    injection_batches = set(rng.sample(range(cfg.batches), min(cfg.injection_batches,
                                                               cfg.batches)))
    forced_sizes = {0: cfg.min_essays, 1: cfg.max_essays}

    def emit(time: float, kind: str, bid: str, obj: dict[str, Any], label: str = "valid",
             value: bytes | None = None) -> None:
        data = value if value is not None else world.encode(obj)
        specs.append(_Spec(time, kind, bid.encode(), data, label, bid, None))
        if rng.random() < cfg.duplicate_share / (1 - cfg.duplicate_share):
            later = time + rng.uniform(0.0005, 0.25)
            if rng.random() < cfg.semantic_duplicate_share and "data" in obj:
                specs.append(_Spec(later, kind, bid.encode(),
                                   world.encode(_semantic_copy(world, kind, obj)),
                                   "semantic-duplicate", bid, None))
            else:
                specs.append(_Spec(later, kind, bid.encode(), data, "redelivery", bid, None))

    for b in range(cfg.batches):
        n = forced_sizes.get(b) or _essay_count(rng, cfg)
        inj = _injector(b, rng) if b in injection_batches else None
        bid = inj("batch") if inj else f"{cfg.batch_prefix}-{b:04d}"
        essay_ids = [inj(f"essay {i}") if inj else f"{bid}-e{i:03d}" for i in range(n)]
        guest = rng.random() < 0.5
        r = rng.random()
        category = ("unregistered" if r < cfg.unregistered
                    else "incomplete" if r < cfg.unregistered + cfg.incomplete
                    else "excess" if r < cfg.unregistered + cfg.incomplete + cfg.excess_batches
                    else "complete")
        items = n
        if category == "unregistered":
            items = rng.randint(1, n)
        elif category == "incomplete":
            items = n - rng.randint(1, max(1, n // 3)) if n > 1 else 0
        kinds = ["failure" if category != "excess" and rng.random() < cfg.failure_rate
                 else "content" for _ in range(items)]
        if category == "excess":
            kinds += ["content"] * rng.randint(1, cfg.excess_max)

        start = rng.uniform(0.0, 0.97)
        span = rng.uniform(0.005, 0.2)
        times = sorted(start + rng.uniform(0, span) for _ in kinds)
        late = rng.random() < cfg.late_registration and bool(times)
        reg_time = rng.uniform(start, start + span) if late else start - 0.0001

        if category != "unregistered":
            payload = world.registration(bid, essay_ids, guest=guest, inj=inj)
            emit(reg_time, "register", bid, world.envelope("register", payload))
            victims.append(Victim(bid, essay_ids, payload, reg_time))
        for j, (kind, t) in enumerate(zip(kinds, times, strict=True)):
            if kind == "content":
                tsid = inj(f"text {j}") if inj else f"{bid}-t{j:03d}"
                p = world.content(bid, tsid, inj=inj)
            else:
                fuid = inj(f"failed upload {j}") if inj else f"{bid}-f{j:03d}"
                p = world.failure(bid, fuid, inj=inj)
            corr = inj("envelope corr") if inj and rng.random() < 0.5 else None
            emit(t, kind, bid, world.envelope(kind, p, correlation_id=corr))

    malformed = build_malformed(world, victims, cfg.malformed)
    for victim, label, kind, value, intent in malformed:
        if intent in STATEFUL:
            t = victim.reg_time + rng.uniform(0.0005, 0.1)
        else:
            t = rng.uniform(0.0, 1.0)
        specs.append(_Spec(t, kind, victim.bid.encode(), value, label, None, intent))
    again = rng.sample([s for s in specs if s.intent is not None],
                       min(cfg.malformed_redeliveries, len(malformed)))
    for s in again:
        if len(s.value or b"") < 100_000:
            specs.append(_Spec(s.time + rng.uniform(0.001, 0.2), s.kind, s.key, s.value,
                               s.label + "+redelivery", None, s.intent))

    specs.sort(key=lambda s: s.time)
    prediction = predict((i, s.kind, s.key, s.value) for i, s in enumerate(specs))
    messages: list[Message] = []
    disagreements: list[str] = []
    for verdict, (i, s) in zip(prediction.verdicts, enumerate(specs), strict=True):
        assert verdict.seq == i
        if verdict.sqlstate != s.intent:
            disagreements.append(f"#{i} {s.label}: meant {s.intent}, oracle says "
                                 f"{verdict.sqlstate} ({verdict.field}: {verdict.reason})")
        messages.append(Message(i, s.kind, s.key, s.value, s.label,
                                s.batch_id or verdict.batch_id, verdict.sqlstate, s.intent))
    if disagreements:
        raise GeneratorError(f"{len(disagreements)} message(s): " + "; ".join(disagreements[:10]))
    return Generated(cfg, messages, prediction)


def _semantic_copy(world: World, kind: str, env: dict[str, Any]) -> dict[str, Any]:
    """The same event in a new envelope (new event and correlation id). Registrations
    also change metadata and prompt reference (not identity); contents and failures
    change a stored field, which must not change anything: the first copy wins."""
    data = json.loads(json.dumps(env["data"]))
    if kind == "register":
        data["metadata"] = {"redelivered": True}
        data["student_prompt_ref"] = {"storage_id": "prompt-changed"}
    elif kind == "content":
        data["original_file_name"] = "re-upload " + data["original_file_name"][:1000]
    else:
        data["validation_error_code"] = "UNKNOWN_VALIDATION_ERROR"
    return world.envelope(kind, data, style="topic")


# ---------------------------------------------------------------------------
# The bad-input corpus (tests/stack/test_bad_input_corpus.py)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    setup: list[tuple[str, str, bytes]]  # (kind, batch id, value): the state the cases aim at
    cases: list[Message]  # one malformed message per variant
    verdicts: dict[int, Verdict]  # the oracle's verdict on each case, by seq
    injection: list[tuple[str, dict[str, Any]]]  # valid events full of injection strings


def corpus(seed: int = 6) -> Corpus:
    """Every malformed variant once, aimed at a small registered world, plus valid
    events that carry SQL-injection strings in every text field."""
    cfg = GenConfig(seed=seed, big_payload_bytes=BIG_PAYLOAD_BYTES)
    rng = random.Random(seed)
    world = World(rng, cfg)
    setup: list[tuple[str, str, bytes]] = []
    victims: list[Victim] = []
    for b in range(3):
        bid = f"victim-{b}"
        ids = [f"{bid}-e{i}" for i in range(3 + b)]
        payload = world.registration(bid, ids, guest=b % 2 == 0)
        setup.append(("register", bid, json.dumps(world.envelope("register", payload,
                                                                 style="topic")).encode()))
        setup.append(("content", bid, json.dumps(world.envelope(
            "content", world.content(bid, f"{bid}-t0"), style="topic")).encode()))
        victims.append(Victim(bid, ids, payload, 0.0))
    cases = []
    for i, (label, kind, build, intent) in enumerate(MALFORMED_VARIANTS):
        victim = victims[i % len(victims)]
        value = build(world, victim)
        cases.append(Message(i, kind, victim.bid.encode(), value, label, victim.bid, intent,
                             intent))
    prediction = predict([(-1 - i, k, b.encode(), v) for i, (k, b, v) in enumerate(setup)]
                         + [(c.seq, c.kind, c.key, c.value) for c in cases])
    verdicts = {v.seq: v for v in prediction.verdicts}
    wrong = [f"{c.label}: oracle says {verdicts[c.seq].sqlstate}" for c in cases
             if verdicts[c.seq].sqlstate != c.intent]
    if wrong:
        raise GeneratorError("; ".join(wrong))

    injection: list[tuple[str, dict[str, Any]]] = []
    for b, text in enumerate(INJECTIONS):
        def inj(tag: str, text: str = text, b: int = b) -> str:
            return f"{text} [{tag} #{b}]"
        bid = inj("batch")
        ids = [inj(f"essay {i}") for i in range(2)]
        reg = world.registration(bid, ids, guest=b % 2 == 1, inj=inj)
        injection.append(("register", world.envelope("register", reg, style="topic",
                                                     correlation_id=inj("corr"))))
        c = world.content(bid, inj("text"), inj=inj)
        injection.append(("content", world.envelope("content", c, style="bare")))
        f = world.failure(bid, inj("failed upload"), inj=inj)
        f["validation_error_detail"] = {inj("key"): inj("value")}
        f["raw_file_storage_id"] = inj("raw")
        injection.append(("failure", world.envelope("failure", f, style="short",
                                                    correlation_id=inj("fail corr"))))
    return Corpus(setup, cases, {c.seq: verdicts[c.seq] for c in cases}, injection)


def main() -> None:  # pragma: no cover - a quick look at a stream
    import argparse

    parser = argparse.ArgumentParser(description="print statistics of a generated stream")
    parser.add_argument("--seed", type=int, default=GenConfig.seed)
    parser.add_argument("--batches", type=int, default=GenConfig.batches)
    args = parser.parse_args()
    gen = generate(GenConfig(seed=args.seed, batches=args.batches))
    print(json.dumps(gen.stats(), indent=2))


if __name__ == "__main__":
    main()
