"""Redis: the rolling top-content board; docs/sinks/redis.md."""
