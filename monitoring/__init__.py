"""Monitoring of the worker: alert rules, the Grafana dashboard and its builder."""
