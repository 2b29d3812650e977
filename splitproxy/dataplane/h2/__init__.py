"""HTTP/2 and gRPC. Downstream: `server` (the connection protocol), `stream` (one stream as
the HTTP/1.1 exchange machinery sees a client), `request` (a request header block's checks),
`limits` (settings and flood counters), `forward` (a stream proxied to an HTTP/2 upstream).
Upstream: `upstream` (a multiplexed pool per endpoint), `client`, `upstream_stream`,
`outcome` (what a failure counts against), `grpc` (status, timeouts, trailers-only errors)."""
