"""File formats and caches: hashes, tables and results, atomic writes, work folders, listings and image checks,
sample manifests, feature files and their shuffled order, statistics files, reuse of a previous output from DVC's
cache.
"""
