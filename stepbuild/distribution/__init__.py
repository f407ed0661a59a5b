"""The OCI Distribution client: references, auth, transport, push and pull."""
