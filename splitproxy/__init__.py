"""splitproxy: a progressive-delivery reverse proxy."""

__version__ = "0.1.0"
