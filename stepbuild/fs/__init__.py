"""Filesystem helpers: paths resolved inside a root, durable writes."""
