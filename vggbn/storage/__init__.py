"""File formats and caches: hashes, tables and results, atomic writes, work folders, listings, sample
manifests, feature files, statistics files, reuse of a previous output from DVC's cache.
"""
