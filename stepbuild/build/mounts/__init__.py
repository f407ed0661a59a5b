"""RUN --mount: planned as values, realised for one step."""
