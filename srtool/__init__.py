"""srtool: certify classifiers with randomized smoothing and Smooth-Reduce on ONNX Runtime.

    import srtool
    smooth = srtool.Smooth("model.onnx", sigma=0.25)
    label, radius = smooth.certify(x)                      # one C×H×W image in [0,1] (or uint8)
    results = srtool.certify("model.onnx", images="data/", sigma=0.25, out="runs/rs.parquet")

See docs/python.md; srtool.core holds the frozen description of a run (core.Run) under both.
"""

__version__ = "0.1.0"

from .api import (ABSTAIN, Certificate, Prediction, Results, Smooth, certify, load_images,  # noqa: E402
                  predict, read_results, shipped)
from .errors import UsageError  # noqa: E402

__all__ = ["ABSTAIN", "Certificate", "Prediction", "Results", "Smooth", "UsageError", "certify", "load_images",
           "predict", "read_results", "shipped", "__version__"]
