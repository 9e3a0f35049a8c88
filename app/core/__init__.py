"""Serving logic with no web framework in it: admission, batching, scoring, lifecycle."""
