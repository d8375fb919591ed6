"""TRP on ImageNet: timm resnet50, the paper's ImageNet protocol.

Starts from dense weights (``--pretrained``: a state-dict file or an hf-hub id; the
default is torchvision's ResNet-50 on the Hugging Face Hub) and fine-tunes with TRP at
lr 1e-4 for 10 epochs. ``--data-dir`` holds ``train/<class>/*`` and ``val/<class>/*``.
Multi-GPU:

    torchrun --nproc_per_node=8 recipes/imagenet_resnet50.py --data-dir /data/imagenet
"""

from runtime.train_target import plan_for_target
from trp_zoo.train import TrainConfig
from trp_zoo.train.recipe import main

DEFAULTS = TrainConfig(
    model="resnet50",
    dataset="imagenet",
    pretrained="hf-hub:timm/resnet50.tv_in1k",
    scheme="channel",
    energy=0.9,
    period=20,
    nuclear_weight=3e-4,
    epochs=10,
    batch_size=64,
    eval_batch_size=128,
    lr=1e-4,
    weight_decay=1e-4,
    sched="multistep",
    amp="auto",
    channels_last=True,
    workers=8,
    output_dir="runs/imagenet_resnet50",
    model_name="resnet50_trp_{scheme}",
)

if __name__ == "__main__":
    main(DEFAULTS, "recipes/imagenet_resnet50.py", __doc__, target_planner=plan_for_target)
