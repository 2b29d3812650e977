"""Configuration: typed models, the YAML loader (file:line errors), and the small value
types every plane shares (paths, log-safe text)."""
