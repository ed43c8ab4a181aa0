"""Chaos testing of the essay lifecycle service: a seeded event generator
(``chaos.generator``), an independent oracle (``chaos.oracle``) and the chaos
controller (``chaos.run``, ``make chaos``). See docs/RELIABILITY.md."""
