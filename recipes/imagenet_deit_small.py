"""TRP on ImageNet: timm deit_small_patch16_224, the paper's ImageNet protocol with AdamW.

Starts from dense weights (``--pretrained``: a state-dict file or an hf-hub id; the
default is timm's DeiT-S on the Hugging Face Hub) and fine-tunes with TRP for 10 epochs
at a low lr, as the paper does for ResNet-50. TRP trains every Linear of the blocks
(``qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``) low-rank; the patch embedding and the
classifier stay dense. The paper's SGD at lr 1e-4 is swapped for AdamW, the optimizer DeiT
was trained with (transformers fine-tune poorly with SGD): lr 5e-5, a tenth of DeiT's
peak lr for the same global batch of 512 (8 processes x 64), weight decay 0.05 (none on
biases, norms and position embeddings), a 1-epoch warmup while Adam's moments settle,
cosine decay, label smoothing 0.1. ``--data-dir`` holds ``train/<class>/*`` and
``val/<class>/*``. Multi-GPU:

    torchrun --nproc_per_node=8 recipes/imagenet_deit_small.py --data-dir /data/imagenet
"""

from runtime.train_target import plan_for_target
from trp_zoo.train import TrainConfig
from trp_zoo.train.recipe import main

DEFAULTS = TrainConfig(
    model="deit_small_patch16_224",
    dataset="imagenet",
    pretrained="hf-hub:timm/deit_small_patch16_224.fb_in1k",
    layers="all",
    scheme="channel",
    energy=0.9,
    period=20,
    nuclear_weight=3e-4,
    epochs=10,
    batch_size=64,
    eval_batch_size=128,
    opt="adamw",
    lr=5e-5,
    weight_decay=0.05,
    sched="cosine",
    warmup_epochs=1,
    min_lr=1e-6,
    label_smoothing=0.1,
    amp="auto",
    workers=8,
    output_dir="runs/imagenet_deit_small",
    model_name="deit_small_trp_{scheme}",
)

if __name__ == "__main__":
    main(DEFAULTS, "recipes/imagenet_deit_small.py", __doc__, target_planner=plan_for_target)
