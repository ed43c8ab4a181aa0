"""Builders for the input events of SPEC section 2, as envelopes or bare payloads."""

from __future__ import annotations

import json
import uuid
from typing import Any

from els_worker import contract

TOPIC_REGISTERED = contract.REGISTERED.topic
TOPIC_CONTENT = contract.CONTENT_PROVISIONED.topic
TOPIC_FAILED = contract.VALIDATION_FAILED.topic


def envelope(topic: str, data: dict[str, Any], correlation_id: str | None = None, *,
             source_service: str = "tests", timestamp: str = "2026-11-28T12:00:00Z",
             metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The standard event envelope around ``data`` (tests, bench, chaos and the demo)."""
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": topic,
        "event_timestamp": timestamp,
        "source_service": source_service,
        "schema_version": 1,
        "correlation_id": correlation_id or str(uuid.uuid4()),
        "data": data,
        "metadata": metadata or {},
    }


def registration(batch_id: str, essay_ids: list[str], *, class_id: str | None = None,
                 course_code: str = "ENG5", user_id: str = "user-1") -> dict[str, Any]:
    return envelope(TOPIC_REGISTERED, {
        "entity_id": batch_id,
        "expected_essay_count": len(essay_ids),
        "essay_ids": essay_ids,
        "course_code": course_code,
        "user_id": user_id,
        "org_id": None,
        "class_id": class_id,
        "student_prompt_ref": None,
        "metadata": {},
    })


def content(batch_id: str, text_storage_id: str) -> dict[str, Any]:
    return envelope(TOPIC_CONTENT, {
        "entity_id": batch_id,
        "text_storage_id": text_storage_id,
        "file_upload_id": f"upload-{text_storage_id}",
        "original_file_name": f"{text_storage_id}.docx",
        "raw_file_storage_id": f"raw-{text_storage_id}",
        "file_size_bytes": 1234,
        "content_md5_hash": "d41d8cd98f00b204e9800998ecf8427e",
    })


def failure(batch_id: str, file_upload_id: str) -> dict[str, Any]:
    return envelope(TOPIC_FAILED, {
        "entity_id": batch_id,
        "file_upload_id": file_upload_id,
        "original_file_name": f"{file_upload_id}.pdf",
        "validation_error_code": "TEXT_EXTRACTION_FAILED",
        "validation_error_detail": {"page": 1},
    })


INPUT_BY_KIND = {  # the tests' short names of the contract's input events
    "register": contract.REGISTERED,
    "content": contract.CONTENT_PROVISIONED,
    "failure": contract.VALIDATION_FAILED,
}


def apply(conn: Any, kind: str, event: dict[str, Any]) -> dict[str, Any]:
    """Calls the SQL function for one event in its own transaction; returns its result."""
    row = conn.execute(INPUT_BY_KIND[kind].statement, {"event": json.dumps(event)}).fetchone()
    assert row is not None
    result: dict[str, Any] = row[0]
    return result
