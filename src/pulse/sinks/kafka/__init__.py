"""Kafka: the bus between `pulse produce` and the `pulse consume` workers; docs/sinks/kafka.md."""
