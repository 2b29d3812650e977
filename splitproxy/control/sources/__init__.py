"""Where the guard's counts come from: this process, the fleet (Redis), Prometheus."""
