"""JSON lines: every event as a line of JSON in segment files; the worked example of docs/writing-a-sink.md."""
