"""The architectures the exporters can rebuild, with the facts needed to load their checkpoints.

Each entry says how to build the network, under which key prefix the original training code saved
its state dict, what input it takes and which normalization constants its input layer used. Adding
an architecture means adding one entry here; the export pipeline itself does not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from exporters.archs.resnet import CifarResNet, ImageNetResNet50
from exporters.archs.resnext3d import ResNeXt3D

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# MARS feeds 0-255 pixels minus the ActivityNet mean, with no division (std 1).
ACTIVITYNET_MEAN_255 = (114.7748, 107.7354, 99.4750)

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


def imagenet_classes() -> list[str]:
    """ILSVRC-2012's 1000 class names in label order (exporters/classes/imagenet.txt). Cohen et al.'s
    ImageNet models number classes as an ImageFolder of the synset folders does: this order.
    (ImageNet-32's own label order is not assumed to match, so imagenet32_resnet110 names none.)"""
    return (Path(__file__).resolve().parents[1] / "classes" / "imagenet.txt").read_text().splitlines()


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[[int], nn.Module]  # num_classes -> network with random weights
    prefix: str                       # key prefix in the original checkpoints
    input_shape: tuple[int, ...]      # C,H,W or C,T,H,W, without the batch axis
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_classes: int
    class_names: tuple[str, ...] | None = None  # known names when the output width matches

    def names_for(self, num_classes: int) -> list[str] | None:
        if self.class_names and len(self.class_names) == num_classes:
            return list(self.class_names)
        return None


# Cohen et al. / Salman et al. wrap every network as Sequential(NormalizeLayer, net) and the
# normalize layer holds no tensors, so CIFAR keys are "1.<name>"; ImageNet's net is additionally
# inside DataParallel, hence "1.module.<name>".
SMOOTHING_ARCHS = {
    "cifar_resnet20": Arch("cifar_resnet20", lambda n: CifarResNet(20, n), "1.", (3, 32, 32),
                           CIFAR10_MEAN, CIFAR10_STD, 10, tuple(CIFAR10_CLASSES)),
    "cifar_resnet110": Arch("cifar_resnet110", lambda n: CifarResNet(110, n), "1.", (3, 32, 32),
                            CIFAR10_MEAN, CIFAR10_STD, 10, tuple(CIFAR10_CLASSES)),
    "resnet50": Arch("resnet50", ImageNetResNet50, "1.module.", (3, 224, 224),
                     IMAGENET_MEAN, IMAGENET_STD, 1000, tuple(imagenet_classes())),
    # Salman et al.'s ImageNet-32 pretraining network: the CIFAR ResNet-110 with 1000 outputs.
    # Their get_normalize_layer("imagenet32") uses the *CIFAR-10* mean and std, reproduced here.
    "imagenet32_resnet110": Arch("imagenet32_resnet110", lambda n: CifarResNet(110, n), "1.",
                                 (3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, 1000),
}


def mars_arch(frames: int = 16, size: int = 112) -> Arch:
    """MARS' RGB-stream ResNeXt-101; saved from nn.DataParallel, hence keys "module.<name>"."""
    return Arch("mars_resnext101",
                lambda n: ResNeXt3D(n, sample_size=size, sample_duration=frames),
                "module.", (3, frames, size, size), ACTIVITYNET_MEAN_255, (1.0, 1.0, 1.0), 400)
