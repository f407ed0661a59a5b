"""Layer formats and conversions: tar, capture, apply, unpack, flatten, compress."""
