"""Forge's domain: schemas, the agent service, the scheduler and the event log."""
