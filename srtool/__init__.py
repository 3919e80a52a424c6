"""srtool: certify classifiers with randomized smoothing and Smooth-Reduce on ONNX Runtime."""

__version__ = "0.1.0"
