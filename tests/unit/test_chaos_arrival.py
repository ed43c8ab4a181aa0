"""The chaos oracle judges the stream in the order the broker stored it: a message
sent again after a delivery report without an offset lands after messages generated
later, and the order-determined slot contents must follow the topic (CI saw
cb-0002-t001 in slot 0 after its t000 was sent again)."""

import json
import random

from chaos.generator import Message
from chaos.oracle import predict
from chaos.verify_topics import arrival_order
from chaos.world import GenConfig, World


def _stream() -> list[Message]:
    world = World(random.Random(7), GenConfig())
    bid = "cb-0002"
    ids = [f"{bid}-e{i}" for i in range(3)]
    values = [json.dumps(world.envelope("register", world.registration(bid, ids, guest=True),
                                        style="topic")).encode()]
    kinds = ["register"]
    for t in range(3):
        values.append(json.dumps(world.envelope("content", world.content(bid, f"{bid}-t00{t}"),
                                                style="topic")).encode())
        kinds.append("content")
    return [Message(seq, kind, bid.encode(), value, "valid", bid, None, None)
            for seq, (kind, value) in enumerate(zip(kinds, values, strict=True))]


def test_a_message_sent_again_takes_its_stored_place() -> None:
    messages = _stream()
    # t000 (#1) was reported without an offset and sent again after t001 (#2)
    landed = {("register", 0, 0): messages[0].value, ("content", 1, 0): messages[2].value,
              ("content", 1, 1): messages[1].value, ("content", 1, 2): messages[3].value}
    order = arrival_order(messages, landed)
    assert [seq for seq, *_ in order] == [0, 2, 1, 3]
    batch = predict(order).batches["cb-0002"]
    assert batch.deterministic_slots() == ["cb-0002-t001", "cb-0002-t000", "cb-0002-t002"]
    generated = predict((m.seq, m.kind, m.key, m.value) for m in messages).batches["cb-0002"]
    assert generated.deterministic_slots() == ["cb-0002-t000", "cb-0002-t001", "cb-0002-t002"]


def test_a_copy_stored_twice_counts_once_in_its_first_place() -> None:
    messages = _stream()
    # t000's first send was stored although reported without an offset; its second copy
    # lands last and changes nothing
    landed = {("register", 0, 0): messages[0].value, ("content", 1, 0): messages[1].value,
              ("content", 1, 1): messages[2].value, ("content", 1, 2): messages[3].value,
              ("content", 1, 3): messages[1].value}
    order = arrival_order(messages, landed)
    assert [seq for seq, *_ in order] == [0, 1, 2, 3, 1]
    batch = predict(order).batches["cb-0002"]
    assert batch.deterministic_slots() == ["cb-0002-t000", "cb-0002-t001", "cb-0002-t002"]
