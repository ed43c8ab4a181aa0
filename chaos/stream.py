"""The stream: the generated messages produced in order at a steady pace, as the
upstream services would, with every delivery recorded; paused while a broker restarts."""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

from chaos.config import INPUT_KINDS, MAX_MESSAGE_BYTES, QUIET, log
from chaos.generator import Generated
from chaos.state import RunState
from els_worker.kafka import stored_at

# A message acknowledged without an offset this many times is reported, not sent again.
RESEND_LIMIT = 5


class Stream:
    """Produces the stream and records where each message landed (in the run's state)."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def new_producer(self) -> Producer:
        return Producer({
            "bootstrap.servers": self.state.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.max.bytes": MAX_MESSAGE_BYTES,
            "message.timeout.ms": 300000,
            "client.id": "chaos-producer",
            **QUIET,
        })

    def produce(self, gen: Generated) -> None:
        """Produces the stream in order at a steady pace. The stream stands in for the
        upstream services, which are not under test: while the broker restarts it pauses
        with everything delivered (``pause_stream``) and resumes with a new producer,
        because librdkafka's idempotent producer may hold messages whose fate a broker
        restart left unknown until message.timeout.ms, which would stall the stream.

        A message counts as delivered only with the offset the broker stored it at. A
        report of success without one is no proof (librdkafka's implicit acks after a
        "Not leader for partition", confluent-kafka-go #921), so that message is sent
        again, as the worker's producers do: the system takes any order and any number
        of copies, and the checks find every copy by its bytes."""
        producer = self.new_producer()
        self.wait_known(producer)
        messages = gen.messages
        by_seq = {m.seq: m for m in messages}
        interval = self.state.cfg.produce_seconds / max(1, len(messages))
        resend: list[int] = []

        def on_delivery(seq: int) -> Callable[[KafkaError | None, Message], None]:
            def cb(err: KafkaError | None, msg: Message) -> None:
                if err is not None:
                    self.state.produce_errors.append(f"#{seq}: {err}")
                    return
                where = stored_at(msg)
                if where is None:
                    self.state.unconfirmed[seq] = self.state.unconfirmed.get(seq, 0) + 1
                    log(f"message #{seq} acknowledged without an offset: sending it again")
                    resend.append(seq)
                    return
                self.state.delivered[seq] = (where[1], where[2])
            return cb

        def send(seq: int) -> None:
            m = by_seq[seq]
            while True:
                try:
                    producer.produce(self.state.topics[m.kind], key=m.key, value=m.value,
                                     on_delivery=on_delivery(seq))
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)

        def send_again() -> None:
            while resend:
                seq = resend.pop(0)
                if self.state.unconfirmed[seq] > RESEND_LIMIT:
                    self.state.produce_errors.append(f"#{seq}: acknowledged without an offset "
                                                     f"{self.state.unconfirmed[seq]} times")
                else:
                    send(seq)

        start = time.monotonic()
        paused_for = 0.0
        for m in messages:
            if self.state.pause_requested.is_set():
                t0 = time.monotonic()
                left = producer.flush(300)
                if left:
                    self.state.produce_errors.append(f"{left} message(s) not delivered before a "
                                                     f"pause")
                self.state.paused.set()
                while self.state.pause_requested.is_set():
                    time.sleep(0.05)
                producer = self.new_producer()
                self.state.paused.clear()
                paused_for += time.monotonic() - t0
            due = start + paused_for + m.seq * interval
            while True:
                now = time.monotonic()
                if now >= due:
                    break
                producer.poll(min(0.05, due - now))
            send_again()
            send(m.seq)
        while True:
            left = producer.flush(600)
            if left:
                self.state.produce_errors.append(f"{left} message(s) not delivered after 600 s")
            if not resend:
                break
            send_again()
        self.state.timings["stream_s"] = time.monotonic() - start
        self.state.timings["stream_paused_s"] = paused_for
        self.state.stream_done.set()

    def wait_known(self, producer: Producer) -> None:
        """Until every broker, each asked on its own, and the producer's own metadata
        know every input partition with a leader. A new topic reaches the brokers one
        by one; a metadata answer from one that does not know it yet makes librdkafka
        drop its partition objects, and with them the idempotent producer's sequence
        numbers: the messages after that restart at sequence 0, which the partition's
        leader takes for duplicates of the first ones, and they are acknowledged
        without an offset and never written (librdkafka #3712; seen in ha-short runs as
        the first messages of a partition "acknowledged without an offset", absent)."""
        deadline = time.monotonic() + 30
        askers = [producer] + [AdminClient({"bootstrap.servers": addr, **QUIET})
                               for addr in self.state.bootstrap.split(",")]
        for asker in askers:
            for kind in INPUT_KINDS:
                while not self._knows(asker, self.state.topics[kind]):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the brokers do not all see {self.state.topics[kind]}")
                    time.sleep(0.2)

    @staticmethod
    def _knows(asker: Producer | AdminClient, topic_name: str) -> bool:
        topic = asker.list_topics(topic_name, timeout=10).topics.get(topic_name)
        return (topic is not None and topic.error is None and len(topic.partitions) == 3
                and all(p.leader >= 0 for p in topic.partitions.values()))

    def pause_stream(self) -> bool:
        """Asks the stream to pause with everything delivered; False if it has ended."""
        self.state.pause_requested.set()
        while not self.state.paused.wait(0.2):
            if self.state.stream_done.is_set():
                self.state.pause_requested.clear()
                return False
        return True
