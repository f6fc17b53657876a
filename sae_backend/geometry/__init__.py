"""Geometry of dictionaries: exact blocked nearest neighbours, matching, summary statistics."""
