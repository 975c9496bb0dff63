"""Typed, frozen messages exchanged between actors, and the payload codecs."""
