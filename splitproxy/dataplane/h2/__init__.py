"""HTTP/2 downstream (the `h2` library's state machine on our own transport): `server` is the
connection protocol, `stream` the per-stream glue to the HTTP/1.1 exchange machinery,
`request` the checks of a request's header block, `limits` the settings and flood counters."""
