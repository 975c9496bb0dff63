"""Actors: one per firmware module, each with a bounded mailbox."""
