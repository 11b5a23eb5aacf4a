"""Forecasters, anomaly scoring, online training and the model registry: pure maths at the core."""
