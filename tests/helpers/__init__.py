"""Shared test plumbing, one module per concern: wait, metrics, sim, daemon, prom, openapi, reconcile."""
