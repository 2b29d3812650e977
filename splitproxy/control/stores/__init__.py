"""Where rollout state lives: a file, or Redis shared by replicas (one interface)."""
