"""One reader per on-disk format; each returns rows of the manifest schema."""
