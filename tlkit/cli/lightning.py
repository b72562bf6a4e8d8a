"""LightningCLI for tlkit's model and data: the model takes its class names and kind of labels from the datamodule.

    from tlkit import ImageFolderDataModule, TransferModule
    from tlkit.cli.lightning import TransferCLI

    TransferCLI(TransferModule, ImageFolderDataModule)  # python cli.py fit --model.backbone X --data.root Y

Needs jsonargparse (`pip install 'tlkit[cli]'`). Why a subclass rather than plain LightningCLI: the head's size is
part of the model's constructor (timm's `num_classes`), so the classes must reach the model when it is built, and
linking them from the datamodule is LightningCLI's own way to do that (`link_arguments`, applied on instantiation).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override


class TransferCLI(LightningCLI):
    """LightningCLI whose model gets `classes` and `multi_label` from the datamodule (ImageFolderDataModule has both
    once it is built), so `--model.backbone` and `--data.root` make a whole command line. --print_config leaves the
    linked arguments out, so a printed config runs again with --config on any data folder."""

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.classes", "model.classes", apply_on="instantiate")
        parser.link_arguments("data.multi_label", "model.multi_label", apply_on="instantiate")


def main(args: Any = None) -> None:
    """`python -m tlkit.cli.lightning fit --model.backbone X --data.root Y`: TransferModule on ImageFolderDataModule."""
    from tlkit.data.datamodule import ImageFolderDataModule
    from tlkit.model.module import TransferModule

    TransferCLI(TransferModule, ImageFolderDataModule, args=args)


if __name__ == "__main__":
    main()
