"""The contract's names (SPEC sections 2, 5 and 7), in one place.

Every other module, the tests, the chaos run, the benchmarks and the demo take topic
names, event types, the dead-letter suffix and headers, and the SQL function of each
input topic from here. Adding an output event or an input topic touches this file.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE_SERVICE = "essay_lifecycle_service"


@dataclass(frozen=True)
class InputEvent:
    """An input event: its topic, the short name its envelope may carry, its function,
    and the environment variable that names another topic for it."""

    name: str
    topic: str
    short_name: str
    function: str  # the els function that applies one event of this topic
    env_var: str  # overrides the topic (ELS_TOPIC_*)

    @property
    def statement(self) -> str:
        """The call the worker sends for one message value (named parameter, cast)."""
        return f"SELECT els.{self.function}(%(event)s::jsonb)"


@dataclass(frozen=True)
class OutputEvent:
    """An event the database writes to the outbox and the relay publishes."""

    name: str
    topic: str
    env_var: str  # overrides the topic (ELS_TOPIC_OUT_*)


REGISTERED = InputEvent(
    "BatchEssaysRegistered",
    "huleedu.batch.essays.registered.v1",
    "batch.essays.registered",
    "register_batch",
    "ELS_TOPIC_BATCH_REGISTERED",
)
CONTENT_PROVISIONED = InputEvent(
    "EssayContentProvisioned",
    "huleedu.file.essay.content.provisioned.v1",
    "essay.content.provisioned",
    "provision_content",
    "ELS_TOPIC_CONTENT_PROVISIONED",
)
VALIDATION_FAILED = InputEvent(
    "EssayValidationFailed",
    "huleedu.file.essay.validation.failed.v1",
    "essay.validation.failed",
    "record_validation_failure",
    "ELS_TOPIC_VALIDATION_FAILED",
)
INPUTS: tuple[InputEvent, ...] = (REGISTERED, CONTENT_PROVISIONED, VALIDATION_FAILED)

COMPLETED = OutputEvent(
    "BatchContentProvisioningCompleted",
    "huleedu.batch.content.provisioning.completed.v1",
    "ELS_TOPIC_OUT_COMPLETED",
)
SLOT_ASSIGNED = OutputEvent(
    "EssaySlotAssigned", "huleedu.els.essay.slot.assigned.v1", "ELS_TOPIC_OUT_SLOT_ASSIGNED"
)
EXCESS = OutputEvent(
    "ExcessContentProvisioned",
    "huleedu.els.excess.content.provisioned.v1",
    "ELS_TOPIC_OUT_EXCESS",
)
OUTPUTS: tuple[OutputEvent, ...] = (COMPLETED, SLOT_ASSIGNED, EXCESS)
Event = InputEvent | OutputEvent
EVENTS: tuple[Event, ...] = (*INPUTS, *OUTPUTS)

DLQ_SUFFIX = ".dlq"

# Headers of a dead letter (SPEC 7), in the order the worker writes them.
H_SQLSTATE = "els.error.sqlstate"
H_MESSAGE = "els.error.message"
H_DETAIL = "els.error.detail"
H_SOURCE_TOPIC = "els.source.topic"
H_SOURCE_PARTITION = "els.source.partition"
H_SOURCE_OFFSET = "els.source.offset"
H_FAILED_AT = "els.failed_at"
H_ATTEMPTS = "els.attempts"
DLQ_HEADERS: tuple[str, ...] = (H_SQLSTATE, H_MESSAGE, H_DETAIL, H_SOURCE_TOPIC,
                                H_SOURCE_PARTITION, H_SOURCE_OFFSET, H_FAILED_AT, H_ATTEMPTS)
# Headers of a published outbox row, and of a replayed dead letter.
H_EVENT_ID = "event_id"
H_EVENT_TYPE = "event_type"
H_REPLAYED_FROM = "els.replayed_from"

# The largest message the contract allows, with margin. The largest event is a
# BatchContentProvisioningCompleted of 10,000 essays whose essay ids and
# text_storage_ids have 255 characters each: ~5.5 MB in ASCII, ~20.5 MB when every
# character takes 4 bytes in UTF-8, ~31 MB when every character is a control character
# that JSON escapes as \uXXXX. Producers and the topics the worker creates accept 64 MiB
# (the broker's socket.request.max.bytes default is 100 MiB, so one request fits).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def dlq_topic(source_topic: str) -> str:
    """The dead-letter topic of an input topic."""
    return source_topic + DLQ_SUFFIX


def source_of_dlq(dlq: str) -> str | None:
    """The input topic a dead-letter topic belongs to, from its own name (never from a
    header: a header is data, and data must not choose where data goes)."""
    return dlq.removesuffix(DLQ_SUFFIX) if dlq.endswith(DLQ_SUFFIX) else None
