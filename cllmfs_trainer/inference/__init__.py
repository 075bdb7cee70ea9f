"""Prediction-time helpers: parsing generated answers back into entity spans."""
