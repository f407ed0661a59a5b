"""OCI documents and the digest value type."""
