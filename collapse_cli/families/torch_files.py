"""save_model / load_model of a torch module as its state dict in one file, and its n_parameters, for the
torch families (VAE, diffusion, GAN): put TorchStateFiles before Family among the bases and name the file in
`model_file`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from collapse_cli.rundir import damaged


class TorchStateFiles:
    model_file: ClassVar[str]  # the state dict's file in each saved model's folder, e.g. "gan.pt"

    def n_parameters(self, model: Any) -> int:
        return sum(p.numel() for p in model.parameters())

    def save_model(self, model: Any, folder: Path) -> None:
        import torch  # imported here: composing a config never loads torch

        folder.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), folder / self.model_file)

    def load_model(self, folder: Path) -> Any:
        """The model save_model wrote: the base architecture (build_base_model) with the saved weights, on
        self.device, in eval mode. A missing or unreadable file is one line naming it, not a traceback."""
        import torch

        path = Path(folder) / self.model_file
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as error:  # a torn file fails anywhere in torch's unpickler (IndexError, EOFError, ...)
            raise damaged(path, f"unreadable ({type(error).__name__})") from None
        model = self.build_base_model(0)
        try:
            model.load_state_dict(state)
        except (RuntimeError, AttributeError, TypeError) as error:  # not a state dict of this architecture
            raise damaged(path, f"not this model's weights ({type(error).__name__})") from None
        return model.eval()
