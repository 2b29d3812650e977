"""The control plane: the engine that owns rollout state, reload, admin API, metrics."""
