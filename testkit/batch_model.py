"""An independent model of SPEC sections 1-3 and 10, in plain Python (no SQL).

Given the events of one batch in the exact order they were applied, it says what
the final state must be: which slot holds what, what is pending, what is excess,
whether the batch is complete and why. A close (els.close_batch, SPEC section 10)
may come at any point: it times out every empty slot of a registered, incomplete
batch and completes it ('deadline'); before the registration the batch is unknown;
after completion it is already complete. It shares no code with the PL/pgSQL
functions: it is written from the SPEC's rules only.

``chaos/oracle.py`` answers the other question: which final states are possible when
only the order within each partition is known (counts as ranges), and what every
message's verdict must be. This one is exact for one order; that one covers all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class BatchModel:
    batch_id: str
    essay_ids: list[str] | None = None
    # slot index -> ("content", text_storage_id) | ("failure", file_upload_id)
    #               | ("timeout", None) (closed by a deadline) | None (empty)
    slots: list[tuple[str, str | None] | None] = field(default_factory=list)
    pending_content: list[str] = field(default_factory=list)
    pending_failures: list[str] = field(default_factory=list)
    excess_content: list[str] = field(default_factory=list)
    excess_failures: list[str] = field(default_factory=list)
    seen_content: set[str] = field(default_factory=set)
    seen_failures: set[str] = field(default_factory=set)
    completions: int = 0
    completion_reason: str | None = None

    @property
    def registered(self) -> bool:
        return self.essay_ids is not None

    @property
    def complete(self) -> bool:
        return self.registered and all(s is not None for s in self.slots)

    def _place(self, kind: str, key: str) -> bool:
        for i, slot in enumerate(self.slots):
            if slot is None:
                self.slots[i] = (kind, key)
                return True
        return False

    def _maybe_complete(self, was_complete: bool, reason: str = "all_slots_closed") -> None:
        if not was_complete and self.complete:
            self.completions += 1
            self.completion_reason = reason

    def register(self, essay_ids: list[str]) -> str:
        if self.registered:
            return "duplicate"
        self.essay_ids = list(essay_ids)
        self.slots = [None] * len(essay_ids)
        # SPEC: pending content oldest first, then pending failures; no slot -> excess.
        for key in self.pending_content:
            if not self._place("content", key):
                self.excess_content.append(key)
        for key in self.pending_failures:
            if not self._place("failure", key):
                self.excess_failures.append(key)
        self.pending_content, self.pending_failures = [], []
        self._maybe_complete(False)
        return "registered"

    def content(self, text_storage_id: str) -> str:
        if text_storage_id in self.seen_content:
            return "duplicate"
        self.seen_content.add(text_storage_id)
        if not self.registered:
            self.pending_content.append(text_storage_id)
            return "pending"
        was_complete = self.complete
        if self._place("content", text_storage_id):
            self._maybe_complete(was_complete)
            return "assigned"
        self.excess_content.append(text_storage_id)
        return "excess"

    def failure(self, file_upload_id: str) -> str:
        if file_upload_id in self.seen_failures:
            return "duplicate"
        self.seen_failures.add(file_upload_id)
        if not self.registered:
            self.pending_failures.append(file_upload_id)
            return "pending"
        was_complete = self.complete
        if self._place("failure", file_upload_id):
            self._maybe_complete(was_complete)
            return "recorded"
        self.excess_failures.append(file_upload_id)
        return "excess"

    def close(self) -> str:
        """els.close_batch: 'unknown' (an error) before the registration."""
        if not self.registered:
            return "unknown"
        if self.complete:
            return "already_complete"
        self.slots = [("timeout", None) if s is None else s for s in self.slots]
        self._maybe_complete(False, "deadline")
        return "closed"

    def apply(self, kind: str, key: Any) -> str:
        if kind == "register":
            return self.register(key)
        if kind == "content":
            return self.content(key)
        if kind == "close":
            return self.close()
        return self.failure(key)

    def summary(self) -> dict[str, Any]:
        """The same shape as testkit.invariants.batch_state's summary."""
        filled = sum(1 for s in self.slots if s is not None and s[0] == "content")
        timed_out = sum(1 for s in self.slots if s is not None and s[0] == "timeout")
        failed = sum(1 for s in self.slots if s is not None and s[0] == "failure") + timed_out
        return {
            "registered": self.registered,
            "slots": len(self.slots),
            "filled": filled,
            "failed": failed,
            "empty": len(self.slots) - filled - failed,
            "pending_content": len(self.pending_content),
            "pending_failures": len(self.pending_failures),
            "excess_content": len(self.excess_content),
            "excess_failures": len(self.excess_failures),
            "complete": self.complete,
            "completion_events": self.completions,
            "timed_out": timed_out,
            "completion_reason": self.completion_reason,
            "purged": False,
        }

    def slot_contents(self) -> list[tuple[str, str | None] | None]:
        return list(self.slots)
