"""The service entry point: configuration, logging, supervision and the CLI."""

__version__ = "0.1.0"
