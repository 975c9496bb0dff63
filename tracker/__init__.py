"""The service entry point: configuration, logging, supervision and the CLI."""
