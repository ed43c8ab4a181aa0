"""The worker's error classification table (els_worker.errors.CLASSIFICATION), code by
code, and the command line that prints it. What the processor does with each verdict
against the real database: tests/stack/test_worker_errors.py."""

from __future__ import annotations

import pytest

from els_worker.cli import main
from els_worker.config import settings_table
from els_worker.errors import CLASSIFICATION, Action, Scope, classify_sqlstate

# --- the table, code by code --------------------------------------------------

DEAD = Action.DEAD_LETTER
FOREVER = Action.RETRY_FOREVER
BOUNDED = Action.RETRY_BOUNDED
VALUE, BODY = Scope.VALUE, Scope.BODY


@pytest.mark.parametrize(
    ("sqlstate", "scope", "action"),
    [
        # rejections of SPEC section 4, wherever they are raised
        *[(code, BODY, DEAD) for code in ("ELV01", "ELV02", "ELV03", "ELV04", "ELV05", "ELV06")],
        ("ELC01", BODY, DEAD),
        ("ELC02", BODY, DEAD),
        # PostgreSQL refusing the message value itself: a verdict on the value (ELV01)
        ("22P02", VALUE, DEAD),
        ("22P05", VALUE, DEAD),
        ("54001", VALUE, DEAD),  # nested too deep for the JSON parser
        # the same classes raised inside a function body: a bug, not the event's verdict
        ("22P02", BODY, BOUNDED),
        ("22012", BODY, BOUNDED),  # division_by_zero
        ("22001", BODY, BOUNDED),
        ("54001", BODY, BOUNDED),
        # operational: retried without limit
        *[(code, BODY, FOREVER) for code in (
            "08000", "08003", "08006", "08001", "08P01", "40001", "40P01", "55P03", "57014",
            "57P01", "57P02", "57P03", "53000", "53100", "53200", "53300",
            "25006",  # read-only transaction: a demoted primary after a failover
            "25P02", "26000", "42P05",  # session state out of step with the client's
        )],
        (None, BODY, FOREVER),  # connection lost: no SQLSTATE at all
        # deployment: the database is not (yet) what the worker needs; retried without limit
        *[(code, BODY, FOREVER) for code in ("3F000", "42883", "42P01", "42703", "42501")],
        # anything else: bounded
        ("XX000", BODY, BOUNDED),  # internal error
        ("P0001", BODY, BOUNDED),  # plain RAISE EXCEPTION
        ("40002", BODY, BOUNDED),  # integrity constraint violation at commit
        ("55000", BODY, BOUNDED),  # object not in prerequisite state
        ("57P04", BODY, BOUNDED),  # database dropped
        ("23505", BODY, BOUNDED),  # unique violation escaping a function would be a bug
        ("ELX01", BODY, BOUNDED),  # unknown custom code
    ],
)
def test_classification_table(sqlstate: str | None, scope: Scope, action: Action) -> None:
    assert classify_sqlstate(sqlstate, scope).action is action


def test_longest_prefix_wins_and_every_rule_is_reachable() -> None:
    for rule in CLASSIFICATION:
        if rule.prefix:
            probe = rule.prefix + "000"[: max(0, 5 - len(rule.prefix))]
            scope = BODY if rule.scope is Scope.ANY else rule.scope
            assert classify_sqlstate(probe, scope) == rule, rule
    # the catch-all is last and bounded
    assert CLASSIFICATION[-1].prefix == ""
    assert CLASSIFICATION[-1].action is BOUNDED
    # a value PostgreSQL refused as jsonb is reported as ELV01
    assert classify_sqlstate("22P05", VALUE).report_as == "ELV01"


def test_help_lists_table_and_every_env_var(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name, _default, _text in settings_table():
        assert name in out
    for rule in CLASSIFICATION:
        assert rule.reason in out
