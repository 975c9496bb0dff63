"""Persistent state of the device: configuration, FOTA status, unsent data."""
