"""The test toolkit: every helper the tests share, imported from its module here. conftest.py
files hold fixtures only (`refused_port`; the rollout `harness`; the replicas' `redis_server`,
`redis_client`, `prometheus`, `key_prefix`).

- `waiting`: `WAIT`, `wait_until` (the one bounded poll, sync or async predicate).
- `ports`: `free_port`, `refusing_ports`, `accepts`, `refuses`.
- `upstream`: the one test upstream (`Upstream`, `run_upstream`, `run_upstreams`): answers with
  its name, counts what it sees, fails / slows down / stops when told; `serve_app`.
- `rawupstream`: `run_raw_upstream(handler)` for misbehaving peers, the strict `read_request`,
  and shared handlers (`respond_with`, `sequence`, `recording_upstream`).
- `rawhttp`: exact request bytes and a strict client (`raw_client`, `get`, `assert_error`).
- `configs`: `route`, `proxy_config`, `split_config`, `rollout_config`.
- `proxy`: `run_proxy`, `proxied`, `version_errors` (the data plane alone).
- `service`: a whole splitproxy (`run_service`, `running_service`, `write_config`,
  `generation`), its admin API (`admin`, `status`, `scrape`, `metric`), and `Reloads`, the
  positive signal that the config watcher's changes were seen and handled.
- `load`: clients that count who answered (`served_by`, `hit`, `Load`).
- `engine`: `Harness`, `ManualClock`, `MemoryStore` (the rollout engine without sleeping).
- `fakes`: a webhook receiver and a fake Prometheus.
- `processes`: `require_binary`, `redis-server` / `prometheus` children, `wait_ready` for any
  child process.
- `replicas`: several Services sharing Redis (`run_replicas`, `Replica`, `judge_of`), and
  `StoreReads`, the positive signal that each has read the shared state again.
- `memory`: `peak_rss`; `cli`: `python -m splitproxy` as a subprocess.
"""
