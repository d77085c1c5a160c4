"""Entry points: the `maskdex` CLI, Ray job drivers and the Ray Serve application."""
