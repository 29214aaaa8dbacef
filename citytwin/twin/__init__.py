"""The twin: scenario, clock, city network, traffic engine, hazards, ledger, KPIs, reports, CLI."""
