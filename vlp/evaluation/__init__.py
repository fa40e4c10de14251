"""Evaluations: they see only ``encode_image`` / ``encode_text``, never objectives."""
