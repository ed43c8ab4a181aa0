"""The bad-input corpus (chaos.generator.corpus) that tests/stack/test_bad_input_corpus.py
sends through every SQL function covers every error code of SPEC 4 and many kinds of
bad input, up to a 5 MB payload."""

from __future__ import annotations

from chaos.generator import corpus

CORPUS = corpus()


def test_corpus_covers_every_code_and_many_kinds() -> None:
    codes = {c.expect for c in CORPUS.cases}
    assert codes == {"ELV01", "ELV02", "ELV03", "ELV04", "ELV05", "ELV06", "ELC01", "ELC02"}
    kinds = {c.label.split(":")[0] for c in CORPUS.cases}
    assert len(kinds) >= 20, sorted(kinds)
    assert any(len(c.value or b"") >= 5 * 1024 * 1024 for c in CORPUS.cases), "no 5 MB payload"
