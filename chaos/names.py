"""The names the chaos harness writes its stream with: the input events under the run's
short kinds (from the contract, through testkit) and SPEC 2's enums. The oracle
(``chaos.oracle``) keeps its own copy, written from the SPEC, and imports nothing of
this or the worker's; tests/unit/test_chaos_names.py checks that the two agree."""

from __future__ import annotations

from testkit.events import INPUT_BY_KIND

TOPIC_NAMES = {kind: event.topic for kind, event in INPUT_BY_KIND.items()}
SHORT_NAMES = {kind: event.short_name for kind, event in INPUT_BY_KIND.items()}
# SPEC 2: course_code and validation_error_code, as the generator writes valid payloads
COURSE_CODES = ("ENG5", "ENG6", "ENG7", "SV1", "SV2", "SV3")
VALIDATION_ERROR_CODES = ("EMPTY_CONTENT", "CONTENT_TOO_SHORT", "CONTENT_TOO_LONG",
                          "RAW_STORAGE_FAILED", "TEXT_EXTRACTION_FAILED",
                          "ENCRYPTED_FILE_UNSUPPORTED", "UNKNOWN_VALIDATION_ERROR")
