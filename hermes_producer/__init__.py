"""The Hermes producer: the `hermes` CLI, batch pipeline and client."""
