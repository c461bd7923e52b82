"""`pulse board`: a live web page of the Redis board and the pipeline's health (docs/board.md).

`collect` reads (Redis and Pulse's own status, one reader for every page),
`server` serves the page, its assets (`static/`, shipped in the package) and
the server-sent event stream.
"""
