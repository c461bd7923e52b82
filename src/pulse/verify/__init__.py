"""`pulse verify`: prove that each destination equals the source, and repair what drifted.

- `checksum`: the canonical text of a row and the checksum aggregate, one
  definition written twice (PostgreSQL and BigQuery SQL);
- `bigquery`: the bisection of the BigQuery table against the source;
- `redis`: the board's window against the same window computed in SQL;
- `report`: findings, per-destination results, the table and the JSON.

docs/verify.md is the user's page.
"""
