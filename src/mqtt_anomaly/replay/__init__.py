"""Replay: re-score recorded readings through the detectors."""
