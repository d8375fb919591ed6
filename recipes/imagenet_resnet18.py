"""TRP on ImageNet: timm resnet18, the paper's ImageNet protocol (as imagenet_resnet50.py).

Starts from dense weights (``--pretrained``; default torchvision's ResNet-18 on the
Hugging Face Hub) and fine-tunes with TRP at lr 1e-4 for 10 epochs.

    torchrun --nproc_per_node=8 recipes/imagenet_resnet18.py --data-dir /data/imagenet
"""

import dataclasses

from imagenet_resnet50 import DEFAULTS as RESNET50

from runtime.train_target import plan_for_target
from trp_zoo.train.recipe import main

DEFAULTS = dataclasses.replace(
    RESNET50,
    model="resnet18",
    pretrained="hf-hub:timm/resnet18.tv_in1k",
    batch_size=128,
    output_dir="runs/imagenet_resnet18",
    model_name="resnet18_trp_{scheme}",
)

if __name__ == "__main__":
    main(DEFAULTS, "recipes/imagenet_resnet18.py", __doc__, target_planner=plan_for_target)
