"""The external HTTP system: CloudEvents batches, the outbox, delivery lanes; docs/sinks/external.md."""
