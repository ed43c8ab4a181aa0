"""Configuration from the environment: the Kafka settings each client gets."""

from __future__ import annotations

from els_worker import contract
from els_worker.config import Config, topic_field

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


def test_every_topic_of_the_contract_is_configured_by_its_variable() -> None:
    """Each event of els_worker.contract has its Config field, set by the event's own
    variable, defaulting to the contract's topic (inputs) or to the row's (outputs);
    routes and output topics follow what is configured."""
    defaults = Config()
    assert defaults.routes == {e.topic: e.statement for e in contract.INPUTS}
    assert defaults.output_topics == [e.topic for e in contract.OUTPUTS]
    env = {e.env_var: f"custom.{e.name}" for e in contract.EVENTS}
    cfg = Config.from_env(env)
    for event in contract.EVENTS:
        assert cfg.topic(event) == f"custom.{event.name}"
        assert getattr(cfg, topic_field(event)) == f"custom.{event.name}"
    assert cfg.route_functions == {f"custom.{e.name}": e.function for e in contract.INPUTS}
    assert cfg.output_topic(contract.EXCESS.name, contract.EXCESS.topic) == "custom." + (
        contract.EXCESS.name)
    assert cfg.output_topic("SomethingElse", "row.topic") == "row.topic"
