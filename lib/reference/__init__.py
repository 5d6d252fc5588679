"""Wrappers that run reference implementations (TensorFlow/Keras packages) for cross-checks."""
