"""Storage management beside the mount: usage reports, bulk pull and push, orphan
cleanup. These commands open the configured tiers directly (no mount, no cache) and
retry each request with the chain's one policy."""
