"""The Essay Lifecycle Service worker (SPEC section 7), one concern per module.

``worker.py`` at the top of the repository is the entry point; the code lives here:

* ``contract``      the contract's names: topics, event types, DLQ suffix and headers, SQL per topic
* ``config``        the one table of environment variables and their defaults
* ``errors``        what an error means: the classification table, PostgreSQL diagnostics
* ``retry``         backoff and the one retry helper every loop uses
* ``db``            connections and every SQL statement the worker sends
* ``messages``      a consumed message, decoded and checked before the database sees it
* ``apply``         a micro-batch applied in one transaction (fast, careful, systemic)
* ``kafka``         client settings, producing with delivery reports, topic creation
* ``dead_letters``  writing dead letters (and stand-ins for oversize ones)
* ``relay``         the outbox relay thread
* ``consumer``      the consume loop: rebalances, offsets, shutdown
* ``watchdog``      the partition stall watchdog: a partition librdkafka stopped fetching
* ``maintenance``   deadlines, retention and batch gauges on a schedule, one worker at a time
* ``partitions``    partitions behind PL/Proxy: migrate each, (re)build the proxy (SPEC 9)
* ``audit``         proof of delivery: published outbox rows read back from Kafka (worker.py audit)
* ``observability`` JSON logs and Prometheus metrics
* ``health``        the health verdict and the HTTP server (/metrics, /healthz, /health/batches)
* ``admin``         DBA commands: inspect, dry-run
* ``replay``        dlq-replay
* ``report``        the per-event log line and counters of an applied micro-batch
* ``service``       one worker process: its threads, signals, start and stop
* ``cli``           the command line
"""
