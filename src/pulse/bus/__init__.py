"""The bus between the producer and the sinks when they run as separate workers (Kafka)."""
