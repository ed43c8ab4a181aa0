"""Configuration from the environment: the Kafka settings each client gets."""

from __future__ import annotations

from els_worker.config import Config

ENV = {
    "ELS_DATABASE_URL": "postgresql://db/els",
    "ELS_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
    "ELS_KAFKA_CONFIG": '{"security.protocol": "ssl", "session.timeout.ms": 30000}',
    "ELS_KAFKA_CONSUMER_CONFIG": '{"session.timeout.ms": 10000, "group.instance.id": "w-0",'
                                 ' "enable.auto.commit": true}',
}


def test_consumer_settings_reach_the_consumers_only() -> None:
    """ELS_KAFKA_CONSUMER_CONFIG goes to the consumers, over ELS_KAFKA_CONFIG; the
    producers and the admin client get ELS_KAFKA_CONFIG alone (consumer properties make
    librdkafka warn on every producer start). The worker's own settings win over both:
    offsets are committed only after the database transaction, whatever is configured."""
    cfg = Config.from_env(ENV)
    consumer = cfg.kafka_consumer(**{"group.id": "g", "enable.auto.commit": False})
    assert consumer["bootstrap.servers"] == "k1:9092,k2:9092"
    assert consumer["security.protocol"] == "ssl"
    assert consumer["session.timeout.ms"] == 10000
    assert consumer["group.instance.id"] == "w-0"
    assert consumer["enable.auto.commit"] is False
    producer = cfg.kafka(**{"acks": "all"})
    assert producer == {"bootstrap.servers": "k1:9092,k2:9092", "security.protocol": "ssl",
                        "session.timeout.ms": 30000, "acks": "all"}
