"""The reference IOC, the default system under test: domain core, server, storage, rules, dashboard."""
