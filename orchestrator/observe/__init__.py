"""Observability, pure: PromQL built from the metric schema (``spec/metrics.py``), the Grafana dashboards and the
Prometheus alert rules. Nothing here scrapes or serves; ``runtime`` and ``cli`` do that."""
