"""Health: samples and their judgement (`window`), the breaker (`breaker`, `machine`), the
one owner tying them together (`owner.Health`), what a transition does outside (`effects`),
the active probes (`probes`) and the CDP log signal (`cdplog`)."""
