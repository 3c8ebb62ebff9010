"""Data of the distcache conformance suite: recorded vectors and the requirement catalogue.

Installed as the package ``distcache.conformance_data``; read it with
:func:`distcache.conformance_data_path` rather than by file path.
"""
