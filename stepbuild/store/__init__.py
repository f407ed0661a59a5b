"""The on-disk store: blobs, layer dirs, tags, records, garbage collection."""
