"""HTTP/1.1 between clients and upstreams: the protocols, exchanges and pools."""
