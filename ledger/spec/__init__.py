"""A spec file -> frozen, validated objects: loading, key checks, `--set` overrides, the run fingerprint,
the pseudo-label section."""
