"""Development tooling, outside the runtime package: local services (`make services`, `pulse dev`),
scratch databases for tests and benchmarks, and the demo (`make demo`)."""
