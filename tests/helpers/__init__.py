"""Shared test plumbing, one module per concern.

wait (bounded waits), metrics (reading the registry), sim (driving the simulators),
daemon (in-process and as a process), prom (a real Prometheus), openapi, reconcile.
"""
