"""TRP on CIFAR-10: ResNet-20 (He et al.), the paper's CIFAR setting.

SGD momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 for 164 epochs with x0.1 at
epochs 82 and 122; TRP keeps 90% energy every 5 steps, nuclear weight 3e-4.
``--data-dir`` is the CIFAR-10 python version (``cifar-10-batches-py``).

    python recipes/cifar10_resnet20.py --data-dir data/cifar-10-batches-py --scheme spatial
"""

from runtime.train_target import plan_for_target
from trp_zoo.train import TrainConfig
from trp_zoo.train.recipe import main

DEFAULTS = TrainConfig(
    model="cifar_resnet20",
    dataset="cifar10",
    scheme="channel",
    energy=0.9,
    period=5,
    nuclear_weight=3e-4,
    epochs=164,
    batch_size=128,
    lr=0.1,
    weight_decay=1e-4,
    sched="multistep",
    decay_milestones=[82, 122],
    decay_rate=0.1,
    workers=2,
    output_dir="runs/cifar10_resnet20",
    model_name="resnet20_trp_{scheme}",
)

if __name__ == "__main__":
    main(DEFAULTS, "recipes/cifar10_resnet20.py", __doc__, target_planner=plan_for_target)
