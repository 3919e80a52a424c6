"""PyTorch → ONNX exporters for srtool (the only place besides training scripts that imports torch).

Scripts, each runnable as `python -m exporters.<name>` or `python exporters/<name>.py`:
  smoothing  Cohen et al. / Salman et al. (SmoothAdv) checkpoints: cifar_resnet20, cifar_resnet110,
             resnet50 (ImageNet), imagenet32_resnet110
  mars       MARS RGB-stream 3-D ResNeXt-101 video classifiers
  factory    any PyTorch model built by a `package.module:callable`

Shared machinery (export, metadata, float16, parity) lives in `common.py` and `fp16.py`; the
networks in `archs/`. See README.md for the commands that certify the exported models.
"""
