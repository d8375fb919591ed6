"""TRP on CIFAR-10: ResNet-56 (He et al.), with the settings of cifar10_resnet20.py.

python recipes/cifar10_resnet56.py --data-dir data/cifar-10-batches-py
"""

import dataclasses

from cifar10_resnet20 import DEFAULTS as RESNET20

from runtime.train_target import plan_for_target
from trp_zoo.train.recipe import main

DEFAULTS = dataclasses.replace(
    RESNET20,
    model="cifar_resnet56",
    output_dir="runs/cifar10_resnet56",
    model_name="resnet56_trp_{scheme}",
)

if __name__ == "__main__":
    main(DEFAULTS, "recipes/cifar10_resnet56.py", __doc__, target_planner=plan_for_target)
