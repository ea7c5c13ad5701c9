"""Curation: raw videos -> measured, filtered, captioned clips (see pipeline.curate)."""
