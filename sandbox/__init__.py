"""Local stand-ins for cloud services, for tests and the embedded cloud."""
