"""BigQuery: the batch sink (spool, loader) and the Storage Write stream; docs/sinks/bigquery.md."""
